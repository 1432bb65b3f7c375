//! A spec: what the builder implements and the reviewer checks. It comes from a model
//! (refine mode) or from the story itself (passthrough mode, e.g. a BMAD story that
//! already lists its acceptance criteria and test command).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub summary: String,
    pub acceptance_criteria: Vec<String>,
    /// Exactly one command; exit status 0 means the change passes review.
    pub test_command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the story has no acceptance criteria; add a '## Acceptance criteria' section with one '- ' line per criterion")]
    NoCriteria,
    #[error("the story names no test command; add a '## Test command' section with the command in backticks, or set the project's --test-command")]
    NoTestCommand,
    #[error("the story names more than one test command ({0:?}); keep exactly one")]
    SeveralTestCommands(Vec<String>),
}

impl Spec {
    /// Renders the spec as the prompt text an agent reads.
    pub fn to_prompt(&self, title: &str) -> String {
        let mut text = format!(
            "# {title}\n\n{}\n\n## Acceptance criteria\n",
            self.summary.trim()
        );
        for criterion in &self.acceptance_criteria {
            text.push_str(&format!("- {criterion}\n"));
        }
        text.push_str(&format!(
            "\n## Test command\nThe change passes when this exits 0: `{}`\n",
            self.test_command
        ));
        text
    }
}

/// Takes a story as its own spec: bullets under a heading that contains "acceptance
/// criteria", and the one command under a heading that contains "test command" (in
/// backticks or a fenced block). `fallback_test_command` (the project's) is used when
/// the story names none.
pub fn passthrough(body: &str, fallback_test_command: Option<&str>) -> Result<Spec, SpecError> {
    let mut section = String::new();
    let mut summary = Vec::new();
    let mut criteria = Vec::new();
    let mut commands = Vec::new();
    let mut in_fence = false;
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence && trimmed.starts_with('#') {
            section = trimmed.trim_start_matches('#').trim().to_lowercase();
            continue;
        }
        if section.contains("acceptance criteria") {
            if let Some(item) = trimmed
                .strip_prefix("- ")
                .or_else(|| trimmed.strip_prefix("* "))
            {
                let item = item
                    .trim_start_matches("[ ]")
                    .trim_start_matches("[x]")
                    .trim();
                if !item.is_empty() {
                    criteria.push(item.to_owned());
                }
            }
        } else if section.contains("test command") {
            if in_fence {
                if !trimmed.is_empty() {
                    commands.push(trimmed.to_owned());
                }
            } else if let Some(command) = first_code_span(trimmed) {
                commands.push(command);
            }
        } else if !trimmed.is_empty() {
            summary.push(trimmed);
        }
    }
    if criteria.is_empty() {
        return Err(SpecError::NoCriteria);
    }
    commands.dedup();
    let test_command = match commands.len() {
        0 => fallback_test_command
            .filter(|c| !c.trim().is_empty())
            .map(str::to_owned)
            .ok_or(SpecError::NoTestCommand)?,
        1 => commands.remove(0),
        _ => return Err(SpecError::SeveralTestCommands(commands)),
    };
    Ok(Spec {
        summary: summary.join("\n"),
        acceptance_criteria: criteria,
        test_command,
    })
}

fn first_code_span(line: &str) -> Option<String> {
    let start = line.find('`')? + 1;
    let end = start + line[start..].find('`')?;
    let span = line[start..end].trim();
    (!span.is_empty()).then(|| span.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BMAD: &str = "As a user I want a greeting.\n\n## Acceptance criteria\n- `hello.txt` says hello\n- [ ] it ends with a newline\n\n## Test command\n`sh test.sh`\n";

    #[test]
    fn a_bmad_story_is_its_own_spec() {
        let spec = passthrough(BMAD, None).unwrap();
        assert_eq!(spec.summary, "As a user I want a greeting.");
        assert_eq!(
            spec.acceptance_criteria,
            ["`hello.txt` says hello", "it ends with a newline"]
        );
        assert_eq!(spec.test_command, "sh test.sh");
        assert!(spec.to_prompt("Greeting").contains("`sh test.sh`"));
    }

    #[test]
    fn fenced_commands_and_fallbacks() {
        let fenced = "## Acceptance Criteria\n* works\n## Test Command\n```sh\ncargo test\n```\n";
        assert_eq!(
            passthrough(fenced, None).unwrap().test_command,
            "cargo test"
        );
        let fenced = "## Acceptance Criteria\n* works\n## Test Command\n```\ncargo test\n```\n";
        assert_eq!(
            passthrough(fenced, None).unwrap().test_command,
            "cargo test"
        );
        let none = "## Acceptance criteria\n- works\n";
        assert_eq!(
            passthrough(none, Some("make check")).unwrap().test_command,
            "make check"
        );
        assert_eq!(passthrough(none, None), Err(SpecError::NoTestCommand));
        assert_eq!(
            passthrough("just prose", Some("x")),
            Err(SpecError::NoCriteria)
        );
        let two = "## Acceptance criteria\n- a\n## Test command\n`a`\n`b`\n";
        assert_eq!(
            passthrough(two, None),
            Err(SpecError::SeveralTestCommands(vec!["a".into(), "b".into()]))
        );
    }
}
