//! Claude Code (npm `@anthropic-ai/claude-code`), the default agent:
//! `claude -p --output-format stream-json --verbose` with the prompt on stdin, its
//! tools allowed under `--permission-mode dontAsk`, `--max-turns`, and the reservation
//! as `--max-budget-usd` (it stops itself there and reports what it spent in dollars);
//! `--model` for `--agent-model`; `CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS=1` (Damascus
//! commits; see `invocation`); `--resume SESSION` to continue its session, kept as
//! `~/.claude/projects/<dir>/<session>.jsonl` in the item's HOME. Its stream's last
//! line is a `result` object (`crate::agent_result`).

use std::path::Path;

use damascus_core::transcript::{claude_stream_events, TranscriptEvent};
use damascus_core::AgentKind;

use super::{Agent, End, Invocation, Launch, ModelSpend, Outcome, StreamReader};
use crate::agent_result::{self, AgentResult};

pub(crate) struct Claude;

/// Claude Code's switch for the git instructions and status in its system prompt.
const GIT_INSTRUCTIONS: &str = "CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS";

/// A budget as the agent is told it: rounded down to 1/10000 USD, so that rounding
/// never grants more than was reserved.
pub(crate) fn budget_text(usd: f64) -> String {
    format!("{:.4}", (usd * 10_000.0).floor() / 10_000.0)
}

impl Agent for Claude {
    fn kind(&self) -> AgentKind {
        AgentKind::Claude
    }

    fn program(&self) -> Option<&'static str> {
        Some("claude")
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @anthropic-ai/claude-code"
    }

    fn env_names(&self) -> &'static [&'static str] {
        &[
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "ANTHROPIC_MODEL",
        ]
    }

    fn caps_its_own_budget(&self) -> bool {
        true
    }

    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String> {
        let mut argv: Vec<String> = [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            // stream-json needs --verbose: every message, tool call and result as it
            // happens, for the transcript; the last line is the result object.
            "--verbose",
            "--max-turns",
        ]
        .map(String::from)
        .to_vec();
        argv.push(launch.max_turns.to_string());
        argv.extend(
            [
                "--permission-mode",
                "dontAsk",
                "--allowedTools",
                "Read,Write,Edit,Bash",
            ]
            .map(String::from),
        );
        if let Some(model) = launch.model {
            argv.extend(["--model".into(), model.to_owned()]);
        }
        if let Some(usd) = launch.budget_usd {
            argv.extend(["--max-budget-usd".into(), budget_text(usd)]);
        }
        if let Some(session) = launch.resume {
            argv.extend(["--resume".into(), session.to_owned()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        // Damascus makes the commits, so Claude Code's git instructions and git status
        // are of no use to it, and the status (the recent commits) changes with every
        // build: left out, a resumed session's first request repeats the earlier one
        // up to the new prompt, which a prompt cache bills at its cached price
        // (measured in tests/loops/follow_up.rs: 0.018 instead of 0.043 USD for a
        // rebuild). A deployment that wants them passes the variable as `0` with
        // --agent-env.
        let mut env = Vec::new();
        if launch.var(GIT_INSTRUCTIONS).is_none() {
            env.push((GIT_INSTRUCTIONS.to_owned(), "1".to_owned()));
        }
        Ok(Invocation {
            argv,
            env,
            stdin: Some(prompt),
            ..Invocation::default()
        })
    }

    fn reader(&self, _launch: &Launch<'_>) -> Box<dyn StreamReader> {
        Box::new(ResultReader::default())
    }

    fn session_kept(&self, home: &Path, id: &str) -> bool {
        let file = format!("{id}.jsonl");
        std::fs::read_dir(home.join(".claude/projects"))
            .map(|dirs| dirs.flatten().any(|d| d.path().join(&file).is_file()))
            .unwrap_or(false)
    }
}

/// Reads Claude Code's stream (or any output whose last JSON line is a Claude-style
/// `result` object): the transcript from its lines, the outcome from the result.
#[derive(Default)]
pub(crate) struct ResultReader {
    result: Option<AgentResult>,
}

impl StreamReader for ResultReader {
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent> {
        let events = claude_stream_events(line);
        if events
            .iter()
            .any(|e| matches!(e, TranscriptEvent::Result { .. }))
        {
            self.result = agent_result::parse(line);
        }
        events
    }

    fn spent(&self) -> Vec<ModelSpend> {
        self.result
            .as_ref()
            .map(AgentResult::spend)
            .unwrap_or_default()
    }

    fn outcome(&mut self, exit: Option<i32>) -> Outcome {
        let spend = self.spent();
        let Some(result) = &self.result else {
            let end = match exit {
                Some(0) => End::Success,
                other => super::exit_failure(other, None),
            };
            return Outcome {
                end,
                session: None,
                spend,
                turns: None,
            };
        };
        let end = match (result.end(), exit) {
            (End::Success, Some(0)) => End::Success,
            (End::Success, other) => super::exit_failure(other, None),
            (end, _) => end,
        };
        Outcome {
            end,
            session: result.session_id.clone(),
            spend,
            turns: result.num_turns,
        }
    }
}
