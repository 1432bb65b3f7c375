//! The spec-refiner. Passthrough projects take the story as its own spec; the others
//! ask the model for one. Idempotent: it only reads, and a second run writes the same
//! kind of spec over the first.

use damascus_core::{
    spec, CostEntry, CostSource, PhaseOutput, PhaseReport, Spec, SpecMode, Verdict,
};
use serde_json::{json, Value};

use crate::llm::{LlmError, ReplySchema};
use crate::{answers, fail, report, Inner, PhaseInput};

/// Says the reply's shape in prose too: an endpoint that refuses `response_format`
/// gets only this (see `llm`).
const SYSTEM_PROMPT: &str = "You turn a software story into an implementable spec. Reply with one JSON object and nothing else: {\"summary\": string, \"acceptance_criteria\": [string, ...], \"test_command\": string or null, \"questions\": [string, ...]}. acceptance_criteria are concrete and checkable. test_command is exactly one shell command, run at the repository root, that exits 0 when every criterion holds; null only when you ask questions. Leave questions empty unless the story cannot be implemented without a person's answer.";

/// The reply's shape, sent as `response_format`: core's `Spec` plus the questions for a
/// person. Strict mode wants every property required and no others; `test_command` may
/// be null, as `parse_reply` then takes the project's.
pub(crate) fn reply_schema() -> ReplySchema {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    ReplySchema {
        name: "spec",
        schema: json!({
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "acceptance_criteria": strings,
                "test_command": {"type": ["string", "null"]},
                "questions": strings,
            },
            "required": ["summary", "acceptance_criteria", "test_command", "questions"],
            "additionalProperties": false,
        }),
    }
}

pub async fn run(inner: &Inner, input: &PhaseInput) -> PhaseReport {
    let fallback = input.project.test_command.as_deref();
    match input.project.spec_mode {
        SpecMode::Passthrough => match spec::passthrough(&input.item.body, fallback) {
            Ok(spec) => pass(spec, fallback),
            Err(e) => fail(format!("passthrough spec: {e}"), "").into(),
        },
        SpecMode::Refine => refine(inner, input).await,
    }
}

fn pass(mut spec: Spec, project_test_command: Option<&str>) -> PhaseReport {
    if let Some(command) = project_test_command {
        // The project's test command is the one the reviewer runs (see review_phase).
        spec.test_command = command.to_owned();
    }
    let test_command = spec.test_command.clone();
    Verdict::Pass(PhaseOutput {
        spec: serde_json::to_value(&spec).ok(),
        test_command: Some(test_command),
        ..PhaseOutput::default()
    })
    .into()
}

async fn refine(inner: &Inner, input: &PhaseInput) -> PhaseReport {
    let Some(llm) = &inner.llm else {
        return Verdict::NeedsHuman {
            question: "no model is configured for refining specs; set DAMASCUS_LLM_BASE_URL and DAMASCUS_LLM_MODEL (and DAMASCUS_LLM_API_KEY), or add the project with --spec-mode passthrough".into(),
            context: String::new(),
        }
        .into();
    };
    if let Err(verdict) = input.reserve_budget().await {
        return verdict.into();
    }
    let mut prompt = format!("# {}\n\n{}\n", input.item.title, input.item.body);
    for doc in &input.project.context_docs {
        match tokio::fs::read_to_string(doc).await {
            Ok(text) => prompt.push_str(&format!("\n## Context: {doc}\n{text}\n")),
            Err(e) => {
                return fail(
                    format!("cannot read the project's context document {doc}: {e}"),
                    "",
                )
                .into()
            }
        }
    }
    prompt.push_str(&answers(input).await);
    match llm.chat(SYSTEM_PROMPT, &prompt, &reply_schema()).await {
        Ok(reply) => {
            let cost = CostEntry {
                source: CostSource::Llm,
                model: llm.model().to_owned(),
                tokens_in: reply.tokens_in,
                tokens_out: reply.tokens_out,
                tokens_cached: 0,
                price: None,
                usd: reply.usd,
            };
            let verdict = match parse_reply(&reply.content, input.project.test_command.as_deref()) {
                Ok(spec) => {
                    let spec = pass(spec, input.project.test_command.as_deref());
                    return report(spec.verdict, vec![cost]);
                }
                Err(verdict) => verdict,
            };
            report(verdict, vec![cost])
        }
        // A call that timed out may still be billed: its ledger row says the spend is
        // unknown.
        Err(e @ LlmError::Timeout(_)) => report(
            Verdict::TransientError {
                reason: e.to_string(),
            },
            vec![unknown_spend(llm.model(), "no answer in time")],
        ),
        Err(e @ (LlmError::Transport(_) | LlmError::Unavailable { .. })) => {
            Verdict::TransientError {
                reason: e.to_string(),
            }
            .into()
        }
        Err(e @ LlmError::Refused { .. }) => Verdict::NeedsHuman {
            question: e.to_string(),
            context: String::new(),
        }
        .into(),
        Err(e @ LlmError::Malformed(_)) => report(
            fail(e.to_string(), ""),
            vec![unknown_spend(llm.model(), "the reply could not be read")],
        ),
    }
}

/// A ledger row for a model call whose cost is not known.
fn unknown_spend(model: &str, why: &str) -> CostEntry {
    CostEntry {
        source: CostSource::Llm,
        model: format!("{model} (spend unknown: {why})"),
        tokens_in: 0,
        tokens_out: 0,
        tokens_cached: 0,
        price: None,
        usd: 0.0,
    }
}

/// Reads the model's reply: a spec, a question for a person, or a failure that says
/// what was wrong with it.
pub(crate) fn parse_reply(
    content: &str,
    fallback_test_command: Option<&str>,
) -> Result<Spec, Verdict> {
    let text = content.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .map(|t| t.trim_end().trim_end_matches("```"))
        .unwrap_or(text);
    let malformed = |why: &str| {
        fail(
            format!("the model's reply is not a spec: {why}"),
            crate::process::tail(content),
        )
    };
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let questions: Vec<String> = value["questions"]
        .as_array()
        .map(|qs| {
            qs.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .filter(|q| !q.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !questions.is_empty() {
        return Err(Verdict::NeedsHuman {
            question: questions.join("\n"),
            context: "asked by the spec-refiner's model".into(),
        });
    }
    let criteria: Vec<String> = value["acceptance_criteria"]
        .as_array()
        .ok_or_else(|| malformed("no acceptance_criteria array"))?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .filter(|c| !c.trim().is_empty())
        .collect();
    if criteria.is_empty() {
        return Err(malformed("acceptance_criteria is empty"));
    }
    let test_command = value["test_command"]
        .as_str()
        .filter(|c| !c.trim().is_empty())
        .or(fallback_test_command)
        .ok_or_else(|| malformed("no test_command"))?
        .trim()
        .to_owned();
    if test_command.contains('\n') {
        return Err(malformed("test_command is more than one command"));
    }
    Ok(Spec {
        summary: value["summary"].as_str().unwrap_or_default().to_owned(),
        acceptance_criteria: criteria,
        test_command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let spec = parse_reply(
            "```json\n{\"summary\":\"s\",\"acceptance_criteria\":[\"a\"],\"test_command\":\"make test\",\"questions\":[]}\n```",
            None,
        )
        .unwrap();
        assert_eq!(spec.test_command, "make test");
        assert!(matches!(
            parse_reply(r#"{"questions":["Which DB?"]}"#, None),
            Err(Verdict::NeedsHuman { question, .. }) if question == "Which DB?"
        ));
        for (reply, why) in [
            ("Sure! Here is the spec.", "not JSON"),
            (r#"{"acceptance_criteria":[],"test_command":"x"}"#, "empty"),
            (r#"{"acceptance_criteria":["a"]}"#, "no test_command"),
            (
                r#"{"acceptance_criteria":["a"],"test_command":"a\nb"}"#,
                "more than one",
            ),
        ] {
            match parse_reply(reply, None) {
                Err(Verdict::Fail { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{reply}: {other:?}"),
            }
        }
        assert_eq!(
            parse_reply(r#"{"acceptance_criteria":["a"]}"#, Some("cargo test"))
                .unwrap()
                .test_command,
            "cargo test"
        );
        assert_eq!(
            parse_reply(
                r#"{"summary":"","acceptance_criteria":["a"],"test_command":null,"questions":[]}"#,
                Some("cargo test")
            )
            .unwrap()
            .test_command,
            "cargo test"
        );
    }

    /// The schema, core's `Spec`, the prompt and `parse_reply` name the same fields: a
    /// spec core's parser accepts, with no questions, matches the schema and reads back
    /// as itself.
    #[test]
    fn the_schema_matches_the_spec() {
        let story = "Greet.\n\n## Acceptance criteria\n- hello.txt says hello\n\n## Test command\n`sh test.sh`\n";
        let spec = spec::passthrough(story, None).unwrap();
        let mut reply = serde_json::to_value(&spec).unwrap();
        reply["questions"] = json!([]);

        let shape = reply_schema();
        let schema = &shape.schema;
        assert_eq!(schema["additionalProperties"], false);
        let properties = schema["properties"].as_object().unwrap();
        let mut property_names: Vec<&str> = properties.keys().map(String::as_str).collect();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let mut reply_fields: Vec<&str> = reply
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        property_names.sort_unstable();
        required.sort_unstable();
        reply_fields.sort_unstable();
        assert_eq!(
            property_names, required,
            "strict mode requires every property"
        );
        assert_eq!(
            property_names, reply_fields,
            "the schema and core's Spec differ"
        );
        for (name, value) in reply.as_object().unwrap() {
            assert!(
                has_type(&properties[name], value),
                "{name}: {value} does not match {}",
                properties[name]
            );
            assert!(
                SYSTEM_PROMPT.contains(&format!("\"{name}\"")),
                "the prompt omits {name}"
            );
        }
        assert_eq!(parse_reply(&reply.to_string(), None).unwrap(), spec);
    }

    /// Whether `value` has one of the schema's types (and, for arrays, items of its
    /// item type): as much of JSON Schema as `reply_schema` uses.
    fn has_type(schema: &Value, value: &Value) -> bool {
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            other => panic!("a schema without a type: {other}"),
        };
        types.iter().any(|t| match (*t, value) {
            ("string", Value::String(_)) | ("null", Value::Null) => true,
            ("array", Value::Array(items)) => items.iter().all(|i| has_type(&schema["items"], i)),
            _ => false,
        })
    }
}
