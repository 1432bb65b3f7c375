//! An agent's run as a conversation: its output stream read into normalised events
//! (a message, a tool call with its command or file, a tool's result, usage, the final
//! result, an error), the same for every agent, and each event as one readable line.
//! The loops write the events to the item's log as they happen
//! (`<name>.transcript.jsonl`, one JSON object per line, beside the raw output);
//! `damascus logs` prints them with `TranscriptEvent::line`.
//!
//! Readers here: Claude Code's `--output-format stream-json --verbose` lines
//! (`system`, `assistant`, `user`, `result` objects). A line that is not one of those
//! yields nothing, so any agent's output can be given to it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest text an event keeps (a message, a result, a command); the raw log keeps
/// everything.
const KEEP_CHARS: usize = 2000;

/// One thing an agent did or said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TranscriptEvent {
    /// The run started: its session and model, when the agent says.
    Started {
        session: Option<String>,
        model: Option<String>,
    },
    /// Text the agent wrote.
    Message { text: String },
    /// A tool call: the tool, and what it acts on (a command, a file, a pattern).
    ToolCall {
        id: String,
        tool: String,
        target: String,
    },
    /// A tool's answer; `ok` is false for an error or a refused permission.
    ToolResult { id: String, ok: bool, text: String },
    /// Tokens a model call used (for agents that stream them per call).
    Usage {
        model: Option<String>,
        tokens_in: i64,
        tokens_out: i64,
    },
    /// The run's end as the agent reports it.
    Result {
        ok: bool,
        /// The agent's word for how it ended (`success`, `error_max_turns`, …).
        subtype: String,
        usd: Option<f64>,
        turns: Option<i64>,
        text: String,
    },
    /// An error the agent reported outside a tool.
    Error { text: String },
}

impl TranscriptEvent {
    /// The event as a person reads it in a terminal, on one line.
    pub fn line(&self) -> String {
        let one_line = |text: &str| {
            let text = text.trim().replace('\n', " ⏎ ");
            shorten(&text, 200)
        };
        match self {
            TranscriptEvent::Started { session, model } => format!(
                "── agent started{}{}",
                model
                    .as_deref()
                    .map(|m| format!(", model {m}"))
                    .unwrap_or_default(),
                session
                    .as_deref()
                    .map(|s| format!(", session {s}"))
                    .unwrap_or_default()
            ),
            TranscriptEvent::Message { text } => format!("agent: {}", one_line(text)),
            TranscriptEvent::ToolCall { tool, target, .. } => {
                format!("→ {tool} {}", one_line(target))
            }
            TranscriptEvent::ToolResult { ok: true, text, .. } => {
                format!("  ← {}", one_line(text))
            }
            TranscriptEvent::ToolResult {
                ok: false, text, ..
            } => {
                format!("  ✗ {}", one_line(text))
            }
            TranscriptEvent::Usage {
                model,
                tokens_in,
                tokens_out,
            } => format!(
                "  · {tokens_in} tokens in, {tokens_out} out{}",
                model
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
            TranscriptEvent::Result {
                ok,
                subtype,
                usd,
                turns,
                text,
            } => format!(
                "── {} ({subtype}{}{}){}",
                if *ok { "done" } else { "failed" },
                turns.map(|t| format!(", {t} turns")).unwrap_or_default(),
                usd.map(|u| format!(", {u:.4} USD")).unwrap_or_default(),
                if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(text))
                }
            ),
            TranscriptEvent::Error { text } => format!("error: {}", one_line(text)),
        }
    }
}

fn shorten(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `text` cut to what an event keeps (`KEEP_CHARS`), with `…` when cut.
pub fn keep(text: &str) -> String {
    shorten(text, KEEP_CHARS)
}

/// The events in one line of Claude Code's `stream-json` output (none for a line that
/// is not one of its objects).
pub fn claude_stream_events(line: &str) -> Vec<TranscriptEvent> {
    let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
        return Vec::new();
    };
    let text = |v: &Value| v.as_str().map(keep).unwrap_or_default();
    match value["type"].as_str() {
        Some("system") if value["subtype"] == "init" => vec![TranscriptEvent::Started {
            session: value["session_id"].as_str().map(str::to_owned),
            model: value["model"].as_str().map(str::to_owned),
        }],
        Some("assistant") => {
            // The usage an assistant line carries is the message's start (its output
            // tokens are not counted yet): the run's usage comes with its result.
            blocks(&value["message"])
                .filter_map(|block| match block["type"].as_str()? {
                    "text" => Some(TranscriptEvent::Message {
                        text: text(&block["text"]),
                    }),
                    "tool_use" => Some(TranscriptEvent::ToolCall {
                        id: block["id"].as_str().unwrap_or_default().to_owned(),
                        tool: block["name"].as_str().unwrap_or("tool").to_owned(),
                        target: keep(&tool_target(&block["input"])),
                    }),
                    _ => None,
                })
                .collect()
        }
        Some("user") => blocks(&value["message"])
            .filter(|block| block["type"] == "tool_result")
            .map(|block| TranscriptEvent::ToolResult {
                id: block["tool_use_id"].as_str().unwrap_or_default().to_owned(),
                ok: !block["is_error"].as_bool().unwrap_or(false),
                text: keep(&result_text(&block["content"])),
            })
            .collect(),
        Some("result") => {
            let subtype = value["subtype"].as_str().unwrap_or("unknown").to_owned();
            let denied = value["permission_denials"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
            let ok =
                subtype == "success" && !value["is_error"].as_bool().unwrap_or(false) && !denied;
            vec![TranscriptEvent::Result {
                ok,
                subtype,
                usd: value["total_cost_usd"].as_f64(),
                turns: value["num_turns"].as_i64(),
                text: text(&value["result"]),
            }]
        }
        Some("error") => vec![TranscriptEvent::Error {
            text: keep(&value["error"].to_string()),
        }],
        _ => Vec::new(),
    }
}

/// A message's content blocks (a string content has none).
fn blocks(message: &Value) -> impl Iterator<Item = &Value> {
    message["content"].as_array().into_iter().flatten()
}

/// What a tool call acts on: its command, file, pattern or URL, else its input. The
/// keys are every agent's (Claude Code's `file_path`, OpenCode's `filePath`, Gemini
/// CLI's `dir_path`).
pub fn tool_target(input: &Value) -> String {
    for key in [
        "command",
        "file_path",
        "filePath",
        "dir_path",
        "path",
        "pattern",
        "url",
        "description",
    ] {
        if let Some(target) = input[key].as_str() {
            return target.to_owned();
        }
    }
    match input {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A tool result's text: a string, or the text blocks of a list.
fn result_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, want: &[&str]) {
        let got: Vec<String> = claude_stream_events(line)
            .iter()
            .map(|e| e.line())
            .collect();
        assert_eq!(got, want, "{line}");
    }

    #[test]
    fn claude_code_stream_lines() {
        check(
            r#"{"type":"system","subtype":"init","session_id":"s-1","model":"claude-sonnet-4-5","tools":["Bash"]}"#,
            &["── agent started, model claude-sonnet-4-5, session s-1"],
        );
        check(
            r#"{"type":"assistant","message":{"model":"m","content":[{"type":"text","text":"I will write it."},{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"/w/hello.txt","content":"hello"}}],"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":7}}}"#,
            &["agent: I will write it.", "→ Write /w/hello.txt"],
        );
        check(
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t2","name":"Bash","input":{"command":"cargo test\nls"}}]}}"#,
            &["→ Bash cargo test ⏎ ls"],
        );
        check(
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"File created"}]}}"#,
            &["  ← File created"],
        );
        check(
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"Permission denied"}]}]}}"#,
            &["  ✗ Permission denied"],
        );
        check(
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.25,"permission_denials":[],"result":"done"}"#,
            &["── done (success, 2 turns, 0.2500 USD): done"],
        );
        check(
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":1,"permission_denials":[{"tool_name":"Write"}],"result":""}"#,
            &["── failed (success, 1 turns)"],
        );
        check(
            r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":5}"#,
            &["── failed (error_max_turns, 5 turns)"],
        );
        check("plain text the agent printed", &[]);
        check(r#"{"type":"stream_event","event":{}}"#, &[]);
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        for event in claude_stream_events(
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Edit","input":{"file_path":"a.rs"}}]}}"#,
        ) {
            let line = serde_json::to_string(&event).unwrap();
            assert!(line.starts_with(r#"{"kind":"tool_call""#), "{line}");
            assert_eq!(
                serde_json::from_str::<TranscriptEvent>(&line).unwrap(),
                event
            );
        }
    }

    #[test]
    fn long_text_is_cut_for_the_terminal() {
        let long = "x".repeat(300);
        let line = TranscriptEvent::Message { text: long }.line();
        assert_eq!(line.chars().count(), "agent: ".len() + 200 + 1);
        assert!(line.ends_with('…'));
    }
}
