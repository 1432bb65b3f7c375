//! `command`: any program, run with the project's argv (`--agent-command`) in the
//! worktree, the prompt on stdin, and the `DAMASCUS_*` variables (`DAMASCUS_TASK`,
//! `DAMASCUS_ITEM_ID`, `DAMASCUS_ATTEMPT`, `DAMASCUS_BUDGET_USD`,
//! `DAMASCUS_AGENT_MODEL`, `DAMASCUS_RESULT_FILE`). Exit 0 is success. What it spent
//! is read from the JSON it may write to `DAMASCUS_RESULT_FILE`:
//!
//! ```json
//! {"ok": true, "error": null, "session_id": null, "turns": 3,
//!  "usage": [{"model": "gpt-5", "input_tokens": 1200, "cached_input_tokens": 1000,
//!             "output_tokens": 300, "usd": null}]}
//! ```
//!
//! (every key optional; `usage` one object or a list; tokens without `usd` are priced
//! from the price table), else from a Claude-style `result` line as its last JSON line
//! on stdout (a wrapper around Claude Code). It has no session Damascus can continue.

use std::path::{Path, PathBuf};

use damascus_core::prices::Tokens;
use damascus_core::transcript::TranscriptEvent;
use damascus_core::AgentKind;
use serde::Deserialize;

use super::claude::ResultReader;
use super::{Agent, End, Invocation, Launch, ModelSpend, Outcome, StreamReader};

pub(crate) struct Command;

impl Agent for Command {
    fn kind(&self) -> AgentKind {
        AgentKind::Command
    }

    fn program(&self) -> Option<&'static str> {
        None
    }

    fn install_hint(&self) -> &'static str {
        "any program: give its argv with --agent-command"
    }

    fn env_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String> {
        let argv = launch
            .command
            .filter(|argv| !argv.is_empty())
            .ok_or("a command agent needs its argv; set the project's --agent-command")?
            .to_vec();
        let mut env = vec![(
            "DAMASCUS_RESULT_FILE".to_owned(),
            launch.result_file.to_string_lossy().into_owned(),
        )];
        if let Some(model) = launch.model {
            env.push(("DAMASCUS_AGENT_MODEL".into(), model.to_owned()));
        }
        Ok(Invocation {
            argv,
            env,
            stdin: Some(prompt),
            home_files: Vec::new(),
        })
    }

    fn reader(&self, launch: &Launch<'_>) -> Box<dyn StreamReader> {
        // A result file left by an earlier run must not be read as this one's.
        let _ = std::fs::remove_file(launch.result_file);
        Box::new(CommandReader {
            stdout: ResultReader::default(),
            result_file: launch.result_file.to_path_buf(),
            model: launch.model.map(str::to_owned),
        })
    }

    fn session_kept(&self, _home: &Path, _id: &str) -> bool {
        false
    }
}

struct CommandReader {
    stdout: ResultReader,
    result_file: PathBuf,
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultFile {
    ok: Option<bool>,
    error: Option<String>,
    session_id: Option<String>,
    turns: Option<i64>,
    usage: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(FileUsage),
    Many(Vec<FileUsage>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUsage {
    model: Option<String>,
    #[serde(default)]
    input_tokens: i64,
    #[serde(default)]
    cached_input_tokens: i64,
    #[serde(default)]
    output_tokens: i64,
    usd: Option<f64>,
}

impl CommandReader {
    fn from_file(&self, exit: Option<i32>) -> Option<Outcome> {
        let text = std::fs::read_to_string(&self.result_file).ok()?;
        let file: ResultFile = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(e) => {
                return Some(Outcome {
                    end: End::Failure(format!(
                        "the agent's result file (DAMASCUS_RESULT_FILE) is not the result JSON docs/AGENTS.md describes: {e}"
                    )),
                    session: None,
                    spend: Vec::new(),
                    turns: None,
                })
            }
        };
        let usage = match file.usage {
            None => Vec::new(),
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        };
        let spend = usage
            .into_iter()
            .map(|u| ModelSpend {
                model: u.model.or_else(|| self.model.clone()),
                tokens: Tokens {
                    // `input_tokens` counts cached ones too, as the OpenAI API does.
                    input: (u.input_tokens - u.cached_input_tokens).max(0),
                    cached_input: u.cached_input_tokens.max(0),
                    output: u.output_tokens.max(0),
                },
                usd: u.usd.filter(|usd| usd.is_finite()).map(|usd| usd.max(0.0)),
            })
            .collect();
        let end = match (exit, file.ok, file.error) {
            (Some(0), Some(true) | None, None) => End::Success,
            (Some(0), _, Some(error)) => End::Failure(format!("the agent reported an error: {error}")),
            (Some(0), Some(false), None) => {
                End::Failure("the agent's result says it did not succeed".into())
            }
            (other, _, error) => super::exit_failure(other, error.as_deref()),
        };
        Some(Outcome {
            end,
            session: file.session_id,
            spend,
            turns: file.turns,
        })
    }
}

impl StreamReader for CommandReader {
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent> {
        self.stdout.line(line)
    }

    fn spent(&self) -> Vec<ModelSpend> {
        self.stdout.spent()
    }

    fn outcome(&mut self, exit: Option<i32>) -> Outcome {
        match self.from_file(exit) {
            Some(outcome) => outcome,
            None => {
                let mut outcome = self.stdout.outcome(exit);
                // A wrapper's session is not one Damascus knows how to continue.
                outcome.session = None;
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(dir: &Path, file: Option<&str>) -> CommandReader {
        let path = dir.join("result.json");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        CommandReader {
            stdout: ResultReader::default(),
            result_file: path,
            model: Some("gpt-5".into()),
        }
    }

    #[test]
    fn a_result_file_gives_the_usage_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reader(
            dir.path(),
            Some(r#"{"ok":true,"turns":2,"usage":{"input_tokens":1200,"cached_input_tokens":1000,"output_tokens":300}}"#),
        );
        let outcome = r.outcome(Some(0));
        assert_eq!(outcome.end, End::Success);
        assert_eq!(outcome.turns, Some(2));
        assert_eq!(
            outcome.spend,
            [ModelSpend {
                model: Some("gpt-5".into()),
                tokens: Tokens {
                    input: 200,
                    cached_input: 1000,
                    output: 300
                },
                usd: None
            }]
        );
        let mut failed = reader(dir.path(), Some(r#"{"error":"model refused"}"#));
        assert_eq!(
            failed.outcome(Some(0)).end,
            End::Failure("the agent reported an error: model refused".into())
        );
        let mut exited = reader(dir.path(), Some(r#"{"usage":[{"model":"m","usd":0.5}]}"#));
        let outcome = exited.outcome(Some(3));
        assert_eq!(outcome.end, End::Failure("the agent exited with 3".into()));
        assert_eq!(outcome.spend[0].usd, Some(0.5));
        let mut bad = reader(dir.path(), Some(r#"{"usage":{"tokens":3}}"#));
        match bad.outcome(Some(0)).end {
            End::Failure(why) => assert!(why.contains("DAMASCUS_RESULT_FILE"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_file_the_exit_code_and_a_result_line_decide() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reader(dir.path(), None);
        r.line(r#"{"type":"result","subtype":"success","total_cost_usd":0.1,"session_id":"s"}"#);
        let outcome = r.outcome(Some(0));
        assert_eq!((outcome.end, outcome.session), (End::Success, None));
        assert_eq!(outcome.spend[0].usd, Some(0.1));
        let mut plain = reader(dir.path(), None);
        assert_eq!(plain.outcome(Some(0)).end, End::Success);
        assert_eq!(
            plain.outcome(None).end,
            End::Failure("the agent exited with a signal".into())
        );
    }
}
