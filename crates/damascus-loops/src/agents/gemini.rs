//! Gemini CLI (npm `@google/gemini-cli`):
//! `gemini -p "" -o stream-json --approval-mode yolo --skip-trust -m MODEL
//! [--resume SESSION] [agent args]` with the prompt on stdin (`-p` makes the run
//! headless and is appended to what stdin holds; an empty `-p` leaves the prompt
//! exactly as given, and keeps it out of `ps`). `--skip-trust` is needed: in a folder
//! it does not trust, Gemini CLI lowers yolo to asking and exits 55 headless. `-m` is
//! always given (the project's `--agent-model`, else `GEMINI_MODEL`, else
//! `gemini-2.5-pro`): without it, Gemini CLI first asks another model to choose one.
//!
//! It reads `$HOME/.gemini/settings.json`, written before each run: the API-key auth
//! (without it a headless run with `GOOGLE_GEMINI_BASE_URL` exits 41, "Invalid auth
//! method selected"), no telemetry, usage statistics or update checks, and
//! `model.maxSessionTurns` = `--claude-max-turns` (each model request is a turn; at
//! the limit it exits 53, a turn limit). The key is `GEMINI_API_KEY` (sent as
//! `x-goog-api-key`), a gateway is `GOOGLE_GEMINI_BASE_URL`; it calls
//! `POST {base}/v1beta/models/MODEL:streamGenerateContent?alt=sse` once per turn.
//!
//! Its stream: `init` (session id, model), `message` (the user prompt echoed, the
//! model's text in `delta` pieces), `tool_use`, `tool_result` (`status`
//! `success`/`error`, with `error.type`), `error` (warnings and errors outside a
//! tool), and a last `result` (`status`, `error`, `stats` per model: `input_tokens`
//! counts cached ones, `input` does not; `output_tokens` leaves out thinking, which
//! `total_tokens` holds). It reports no dollars: Damascus prices the tokens. Usage is
//! streamed only in the result, so while it runs its spend is read from the session
//! file it appends each model reply to, with that reply's tokens:
//! `~/.gemini/tmp/<project>/chats/session-<date>-<first 8 of the id>.jsonl`. That is
//! also how a session is kept; `--resume SESSION` continues it (the whole history is
//! sent again).
//!
//! A tool call it refused (a policy's `deny` or `ask_user`, which headless it cannot
//! ask, or a tool it does not offer) makes the run a failure even though Gemini CLI
//! ends it `success`, exit 0. An API error exits with the HTTP status modulo 256
//! (400 → 144) after a `result` with `status: error`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use damascus_core::prices::Tokens;
use damascus_core::transcript::{keep, tool_target, TranscriptEvent};
use damascus_core::AgentKind;
use serde_json::{json, Value};

use super::{Agent, End, Invocation, Launch, ModelSpend, Outcome, StreamReader};

pub(crate) struct Gemini;

/// The model asked for when neither the project nor `GEMINI_MODEL` names one.
pub(crate) const DEFAULT_MODEL: &str = "gemini-2.5-pro";

impl Agent for Gemini {
    fn kind(&self) -> AgentKind {
        AgentKind::Gemini
    }

    fn program(&self) -> Option<&'static str> {
        Some("gemini")
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @google/gemini-cli"
    }

    fn env_names(&self) -> &'static [&'static str] {
        &["GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GEMINI_MODEL"]
    }

    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String> {
        if launch.var("GEMINI_API_KEY").is_none_or(str::is_empty) {
            return Err("Gemini CLI needs GEMINI_API_KEY; set it in the worker's environment (and GOOGLE_GEMINI_BASE_URL for a gateway)".into());
        }
        let model = launch
            .model
            .or_else(|| launch.var("GEMINI_MODEL").filter(|m| !m.is_empty()))
            .unwrap_or(DEFAULT_MODEL);
        let mut argv: Vec<String> = [
            "gemini",
            // Headless; the prompt is stdin, to which `-p` is appended.
            "-p",
            "",
            "--output-format",
            "stream-json",
            "--approval-mode",
            "yolo",
            "--skip-trust",
            "--model",
        ]
        .map(String::from)
        .to_vec();
        argv.push(model.to_owned());
        if let Some(session) = launch.resume {
            argv.extend(["--resume".into(), session.to_owned()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        Ok(Invocation {
            argv,
            // Its configuration and sessions live under the run's HOME.
            env: vec![(
                "GEMINI_CLI_HOME".into(),
                launch.home.to_string_lossy().into_owned(),
            )],
            stdin: Some(prompt),
            home_files: vec![(PathBuf::from(".gemini/settings.json"), settings(launch))],
        })
    }

    fn reader(&self, launch: &Launch<'_>) -> Box<dyn StreamReader> {
        Box::new(GeminiReader::new(launch.home))
    }

    fn session_kept(&self, home: &Path, id: &str) -> bool {
        !session_files(home, id).is_empty()
    }
}

/// `~/.gemini/settings.json` for one run.
fn settings(launch: &Launch<'_>) -> String {
    let settings = json!({
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
        "privacy": {"usageStatisticsEnabled": false},
        "telemetry": {"enabled": false},
        "model": {"maxSessionTurns": launch.max_turns},
    });
    serde_json::to_string_pretty(&settings).expect("settings serialise")
}

/// The files under `home` that hold session `id`: Gemini CLI names them after the
/// id's first 8 characters, and their first line names the whole id.
fn session_files(home: &Path, id: &str) -> Vec<PathBuf> {
    let short: String = id.chars().take(8).collect();
    if short.is_empty() {
        return Vec::new();
    }
    let Ok(projects) = std::fs::read_dir(home.join(".gemini/tmp")) else {
        return Vec::new();
    };
    projects
        .flatten()
        .filter_map(|project| std::fs::read_dir(project.path().join("chats")).ok())
        .flat_map(|chats| chats.flatten().map(|f| f.path()))
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with("session-") && name.ends_with(&format!("-{short}.jsonl"))
            })
        })
        .filter(|path| first_line_names(path, id))
        .collect()
}

/// Whether the first line of a session file names session `id`.
fn first_line_names(path: &Path, id: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = vec![0; 4096];
    let n = file.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    let first = head.lines().next().unwrap_or_default();
    serde_json::from_str::<Value>(first).is_ok_and(|v| v["sessionId"] == id)
}

/// Tokens as Gemini CLI counts them: `prompt` includes `cached`; `total` includes
/// thinking, which is billed as output.
fn tokens(prompt: i64, cached: i64, output: i64, total: i64) -> Tokens {
    Tokens {
        input: (prompt - cached).max(0),
        cached_input: cached.max(0),
        output: output.max(total - prompt).max(0),
    }
}

/// The per-model spend of a `result` line's `stats`.
fn stats_spend(stats: &Value) -> Vec<ModelSpend> {
    let int = |v: &Value, key: &str| v[key].as_i64().unwrap_or(0);
    stats["models"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(model, s)| ModelSpend {
            model: Some(model.clone()),
            tokens: tokens(
                int(s, "input_tokens"),
                int(s, "cached"),
                int(s, "output_tokens"),
                int(s, "total_tokens"),
            ),
            usd: None,
        })
        .filter(|s| s.tokens.total() > 0)
        .collect()
}

/// The `result` line.
struct Ended {
    status: String,
    error: Option<String>,
    spend: Vec<ModelSpend>,
}

/// The model replies of this run read from its session file so far, by record id
/// (a reply is appended again once its tool calls are done).
#[derive(Default)]
struct SessionUsage {
    /// Bytes read of each session file.
    read: HashMap<PathBuf, u64>,
    replies: BTreeMap<String, (String, Tokens)>,
}

impl SessionUsage {
    /// Reads what was appended to the session's files since the last call; only
    /// replies from `since` on (the run's start) count: a resumed session's file
    /// starts with the earlier runs' replies.
    fn refresh(&mut self, home: &Path, session: &str, since: &str) {
        for path in session_files(home, session) {
            let from = self.read.get(&path).copied().unwrap_or(0);
            let Some((text, upto)) = appended(&path, from) else {
                continue;
            };
            self.read.insert(path, upto);
            for line in text.lines() {
                let Ok(record) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                self.record(&record, since);
                for message in record["$set"]["messages"].as_array().into_iter().flatten() {
                    self.record(message, since);
                }
            }
        }
    }

    fn record(&mut self, record: &Value, since: &str) {
        let (Some(id), Some(at)) = (record["id"].as_str(), record["timestamp"].as_str()) else {
            return;
        };
        if record["type"] != "gemini" || at < since || !record["tokens"].is_object() {
            return;
        }
        let t = &record["tokens"];
        let int = |key: &str| t[key].as_i64().unwrap_or(0);
        let tokens = tokens(int("input"), int("cached"), int("output"), int("total"));
        let model = record["model"].as_str().unwrap_or_default().to_owned();
        self.replies.insert(id.to_owned(), (model, tokens));
    }

    fn spend(&self) -> Vec<ModelSpend> {
        let mut by_model: BTreeMap<&str, Tokens> = BTreeMap::new();
        for (model, t) in self.replies.values() {
            let sum = by_model.entry(model.as_str()).or_default();
            sum.input += t.input;
            sum.cached_input += t.cached_input;
            sum.output += t.output;
        }
        by_model
            .into_iter()
            .map(|(model, tokens)| ModelSpend {
                model: (!model.is_empty()).then(|| model.to_owned()),
                tokens,
                usd: None,
            })
            .collect()
    }
}

/// The whole lines appended to `path` after byte `from`, and where they end.
fn appended(path: &Path, from: u64) -> Option<(String, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() <= from {
        return None;
    }
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let whole = bytes.iter().rposition(|b| *b == b'\n')? + 1;
    bytes.truncate(whole);
    Some((
        String::from_utf8_lossy(&bytes).into_owned(),
        from + whole as u64,
    ))
}

/// Reads Gemini CLI's `stream-json` output.
pub(crate) struct GeminiReader {
    home: PathBuf,
    session: Option<String>,
    /// When the run started (`init`'s timestamp).
    started: String,
    /// The model's text so far, sent in pieces; one message once it is whole.
    text: String,
    /// Tool names by call id.
    tools: HashMap<String, String>,
    /// Tool calls it refused: tool and why.
    refused: Vec<String>,
    /// The last error it reported outside a tool.
    error: Option<String>,
    usage: SessionUsage,
    ended: Option<Ended>,
}

impl GeminiReader {
    fn new(home: &Path) -> GeminiReader {
        GeminiReader {
            home: home.to_path_buf(),
            session: None,
            started: String::new(),
            text: String::new(),
            tools: HashMap::new(),
            refused: Vec::new(),
            error: None,
            usage: SessionUsage::default(),
            ended: None,
        }
    }

    /// The model's text gathered so far, as one message.
    fn flush_text(&mut self) -> Option<TranscriptEvent> {
        let text = std::mem::take(&mut self.text);
        (!text.trim().is_empty()).then(|| TranscriptEvent::Message { text: keep(&text) })
    }

    fn event(&mut self, value: &Value) -> Vec<TranscriptEvent> {
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match value["type"].as_str().unwrap_or_default() {
            "init" => {
                self.session = value["session_id"].as_str().map(str::to_owned);
                self.started = str_of(&value["timestamp"]);
                vec![TranscriptEvent::Started {
                    session: self.session.clone(),
                    model: value["model"].as_str().map(str::to_owned),
                }]
            }
            "message" if value["role"] == "assistant" => {
                self.text
                    .push_str(value["content"].as_str().unwrap_or_default());
                if value["delta"] == true {
                    Vec::new()
                } else {
                    self.flush_text().into_iter().collect()
                }
            }
            "tool_use" => {
                let id = str_of(&value["tool_id"]);
                let tool = value["tool_name"].as_str().unwrap_or("tool").to_owned();
                self.tools.insert(id.clone(), tool.clone());
                vec![TranscriptEvent::ToolCall {
                    id,
                    tool,
                    target: keep(&tool_target(&value["parameters"])),
                }]
            }
            "tool_result" => vec![self.tool_result(value)],
            "error" => {
                let text = str_of(&value["message"]);
                if value["severity"] != "warning" {
                    self.error = Some(text.clone());
                }
                vec![TranscriptEvent::Error { text: keep(&text) }]
            }
            "result" => vec![self.result(value)],
            _ => Vec::new(),
        }
    }

    fn tool_result(&mut self, value: &Value) -> TranscriptEvent {
        let id = value["tool_id"].as_str().unwrap_or_default().to_owned();
        let ok = value["status"] == "success";
        let error = value["error"]["message"].as_str().unwrap_or_default();
        // A tool that succeeded says nothing more in the stream than its status.
        let text = value["output"]
            .as_str()
            .or(Some(error).filter(|e| !e.is_empty()))
            .or(value["status"].as_str())
            .unwrap_or_default()
            .to_owned();
        if !ok && refusal(value["error"]["type"].as_str().unwrap_or_default(), error) {
            let tool = self.tools.get(&id).map(String::as_str).unwrap_or("a tool");
            self.refused.push(format!("{tool}: {error}"));
        }
        TranscriptEvent::ToolResult {
            id,
            ok,
            text: keep(&text),
        }
    }

    fn result(&mut self, value: &Value) -> TranscriptEvent {
        let status = value["status"].as_str().unwrap_or("unknown").to_owned();
        let error = value["error"]["message"].as_str().map(str::to_owned);
        let subtype = match value["error"]["type"].as_str() {
            Some(kind) if status != "success" => format!("{status}: {kind}"),
            _ => status.clone(),
        };
        let ok = status == "success" && self.refused.is_empty();
        let text = error.clone().unwrap_or_default();
        self.ended = Some(Ended {
            status,
            error,
            spend: stats_spend(&value["stats"]),
        });
        TranscriptEvent::Result {
            ok,
            subtype,
            usd: None,
            turns: self.turns(),
            text: keep(&text),
        }
    }

    /// The model requests of this run, as its session file counts them.
    fn turns(&self) -> Option<i64> {
        let n = self.usage.replies.len() as i64;
        (n > 0).then_some(n)
    }

    /// How a run with `exit` ended, from its result line (when it printed one).
    fn end(&self, exit: Option<i32>) -> End {
        let Some(ended) = &self.ended else {
            let said = self
                .error
                .clone()
                .or_else(|| exit.and_then(exit_meaning).map(str::to_owned));
            return match exit {
                Some(0) => End::Failure(
                    "Gemini CLI exited without its result line; its log says what happened".into(),
                ),
                Some(53) => End::TurnLimit(said.unwrap_or_default()),
                other => super::exit_failure(other, said.as_deref()),
            };
        };
        if exit == Some(53) {
            return End::TurnLimit(format!(
                "Gemini CLI used the turns it was allowed (--claude-max-turns, its maxSessionTurns): {}",
                ended.error.as_deref().unwrap_or("turn limit")
            ));
        }
        match (ended.status.as_str(), exit) {
            ("success", Some(0)) if self.refused.is_empty() => End::Success,
            ("success", Some(0)) => End::Failure(format!(
                "Gemini CLI refused its tool calls ({}); its tools must run unattended: check the project's agent args (a --policy that denies or asks) and the folder's trust",
                self.refused.join("; ")
            )),
            (_, Some(0)) => End::Failure(format!(
                "Gemini CLI ended with {}: {}",
                ended.status,
                ended.error.as_deref().unwrap_or("no reason given")
            )),
            (_, other) => super::exit_failure(other, ended.error.as_deref()),
        }
    }
}

/// Whether a failed tool call was refused rather than failed: denied by a policy,
/// needing an approval a headless run cannot give, or a tool it does not offer.
fn refusal(kind: &str, message: &str) -> bool {
    matches!(kind, "policy_violation" | "tool_not_registered")
        || message.contains("requires user confirmation")
}

/// What Gemini CLI's own exit codes mean.
fn exit_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        41 => "authentication failed (GEMINI_API_KEY, or the auth settings in ~/.gemini/settings.json)",
        42 => "bad input (a --resume session that is not there, or a bad argument)",
        44 => "its sandbox failed",
        52 => "bad configuration (~/.gemini/settings.json)",
        53 => "it used the turns it was allowed (maxSessionTurns)",
        54 => "a tool failed fatally",
        55 => "the folder is not trusted (--skip-trust, GEMINI_CLI_TRUST_WORKSPACE)",
        130 => "cancelled",
        _ => return None,
    })
}

impl StreamReader for GeminiReader {
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent> {
        let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        let is_text = value["type"] == "message" && value["role"] == "assistant";
        if !is_text {
            events.extend(self.flush_text());
        }
        if self.ended.is_none() {
            if let Some(session) = &self.session {
                self.usage.refresh(&self.home, session, &self.started);
            }
        }
        events.extend(self.event(&value));
        events
    }

    fn spent(&self) -> Vec<ModelSpend> {
        match &self.ended {
            Some(ended) if !ended.spend.is_empty() => ended.spend.clone(),
            _ => self.usage.spend(),
        }
    }

    fn outcome(&mut self, exit: Option<i32>) -> Outcome {
        if self.ended.is_none() {
            if let Some(session) = &self.session {
                self.usage.refresh(&self.home, session, &self.started);
            }
        }
        Outcome {
            end: self.end(exit),
            session: self.session.clone(),
            spend: self.spent(),
            turns: self.turns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::test_launch;

    const INIT: &str = r#"{"type":"init","timestamp":"2026-12-08T01:24:30.664Z","session_id":"fa3482c6-2bd3-4fb5-9207-e2a06fe55a01","model":"gemini-2.5-pro"}"#;
    const TOOL_USE: &str = r#"{"type":"tool_use","timestamp":"2026-12-08T01:24:30.886Z","tool_name":"write_file","tool_id":"write_file__write_file_1796693070753_0","parameters":{"file_path":"hello.txt","content":"hello\n"}}"#;
    const TOOL_OK: &str = r#"{"type":"tool_result","timestamp":"2026-12-08T01:24:31.015Z","tool_id":"write_file__write_file_1796693070753_0","status":"success"}"#;
    const TEXT: &str = r#"{"type":"message","timestamp":"2026-12-08T01:24:31.115Z","role":"assistant","content":"hello.txt now holds hello.","delta":true}"#;
    const RESULT: &str = r#"{"type":"result","timestamp":"2026-12-08T01:24:31.131Z","status":"success","stats":{"total_tokens":2100,"input_tokens":2000,"output_tokens":100,"cached":400,"input":1600,"duration_ms":467,"tool_calls":1,"models":{"gemini-2.5-pro":{"total_tokens":2100,"input_tokens":2000,"output_tokens":100,"cached":400,"input":1600}}}}"#;

    fn read(home: &Path, lines: &[&str]) -> (GeminiReader, Vec<String>) {
        let mut reader = GeminiReader::new(home);
        let events = lines
            .iter()
            .flat_map(|l| reader.line(l))
            .map(|e| e.line())
            .collect();
        (reader, events)
    }

    #[test]
    fn a_run_that_wrote_its_file() {
        let home = tempfile::tempdir().unwrap();
        let user = r#"{"type":"message","timestamp":"2026-12-08T01:24:30.666Z","role":"user","content":"write hello.txt"}"#;
        let (mut reader, events) = read(
            home.path(),
            &[
                INIT,
                user,
                TOOL_USE,
                TOOL_OK,
                TEXT,
                RESULT,
                "Warning: not json",
            ],
        );
        assert_eq!(
            events,
            [
                "── agent started, model gemini-2.5-pro, session fa3482c6-2bd3-4fb5-9207-e2a06fe55a01",
                "→ write_file hello.txt",
                "  ← success",
                "agent: hello.txt now holds hello.",
                "── done (success)",
            ]
        );
        let outcome = reader.outcome(Some(0));
        assert_eq!(outcome.end, End::Success);
        assert_eq!(
            outcome.session.as_deref(),
            Some("fa3482c6-2bd3-4fb5-9207-e2a06fe55a01")
        );
        assert_eq!(
            outcome.spend,
            [ModelSpend {
                model: Some("gemini-2.5-pro".into()),
                tokens: Tokens {
                    input: 1600,
                    cached_input: 400,
                    output: 100
                },
                usd: None
            }]
        );
    }

    #[test]
    fn thinking_is_output() {
        let stats: Value = serde_json::from_str(r#"{"models":{"gemini-2.5-flash":{"total_tokens":1300,"input_tokens":1000,"output_tokens":100,"cached":0,"input":1000}}}"#).unwrap();
        assert_eq!(
            stats_spend(&stats)[0].tokens,
            Tokens {
                input: 1000,
                cached_input: 0,
                output: 300
            }
        );
    }

    #[test]
    fn refused_tools_fail_the_run() {
        let home = tempfile::tempdir().unwrap();
        let asked = r#"{"type":"tool_result","timestamp":"2026-12-08T01:25:32.569Z","tool_id":"write_file__write_file_1796693070753_0","status":"error","output":"Tool execution for \"WriteFile\" requires user confirmation, which is not supported in non-interactive mode.","error":{"type":"unhandled_exception","message":"Tool execution for \"WriteFile\" requires user confirmation, which is not supported in non-interactive mode."}}"#;
        let (mut reader, events) = read(home.path(), &[INIT, TOOL_USE, asked, TEXT, RESULT]);
        assert_eq!(events[4], "── failed (success)");
        match reader.outcome(Some(0)).end {
            End::Failure(why) => assert!(
                why.contains("refused its tool calls (write_file: Tool execution for \"WriteFile\" requires user confirmation"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let missing = r#"{"type":"tool_result","timestamp":"2026-12-08T01:25:25.763Z","tool_id":"write_file__write_file_1796693070753_0","status":"error","output":"Tool \"write_file\" not found. Did you mean one of: \"read_file\", \"write_todos\", \"web_fetch\"?","error":{"type":"tool_not_registered","message":"Tool \"write_file\" not found. Did you mean one of: \"read_file\", \"write_todos\", \"web_fetch\"?"}}"#;
        let (mut reader, _) = read(home.path(), &[INIT, TOOL_USE, missing, RESULT]);
        assert!(
            matches!(reader.outcome(Some(0)).end, End::Failure(why) if why.contains("not found"))
        );
        // A tool that failed on its own is the model's to handle.
        let failed = r#"{"type":"tool_result","tool_id":"t","status":"error","output":"Command exited with code 1","error":{"type":"shell_execute_error","message":"Command exited with code 1"}}"#;
        let (mut reader, _) = read(home.path(), &[INIT, failed, RESULT]);
        assert_eq!(reader.outcome(Some(0)).end, End::Success);
    }

    #[test]
    fn an_api_error_exits_with_its_status() {
        let home = tempfile::tempdir().unwrap();
        let error = r#"{"type":"result","timestamp":"2026-12-08T01:25:47.806Z","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":400,\"message\":\"scripted failure\",\"status\":\"INVALID_ARGUMENT\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0,"duration_ms":0,"tool_calls":0,"models":{"gemini-2.5-pro":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0}}}}"#;
        let (mut reader, events) = read(home.path(), &[INIT, error]);
        assert!(
            events[1].starts_with("── failed (error: unknown): [API Error"),
            "{events:?}"
        );
        let outcome = reader.outcome(Some(144));
        assert!(outcome.spend.is_empty());
        match outcome.end {
            End::Failure(why) => assert!(
                why.starts_with("the agent exited with 144: [API Error")
                    && why.contains("scripted failure"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let (mut untrusted, _) = read(home.path(), &[]);
        assert!(
            matches!(untrusted.outcome(Some(55)).end, End::Failure(why) if why.contains("not trusted"))
        );
        let (mut limited, _) = read(home.path(), &[]);
        assert!(matches!(limited.outcome(Some(53)).end, End::TurnLimit(_)));
        let turn_limit = r#"{"type":"result","timestamp":"2026-12-08T01:35:04.467Z","status":"error","error":{"type":"FatalTurnLimitedError","message":"Reached max session turns for this session. Increase the number of turns by specifying maxSessionTurns in settings.json."},"stats":{"total_tokens":1080,"input_tokens":1000,"output_tokens":50,"cached":200,"input":800,"duration_ms":0,"tool_calls":1,"models":{"gemini-2.5-pro":{"total_tokens":1080,"input_tokens":1000,"output_tokens":50,"cached":200,"input":800}}}}"#;
        let (mut limited, _) = read(home.path(), &[INIT, TOOL_USE, TOOL_OK, turn_limit]);
        let outcome = limited.outcome(Some(53));
        assert!(
            matches!(&outcome.end, End::TurnLimit(why) if why.contains("Reached max session turns")),
            "{:?}",
            outcome.end
        );
        // 30 thinking tokens are in the total only; they are billed as output.
        assert_eq!(
            outcome.spend[0].tokens,
            Tokens {
                input: 800,
                cached_input: 200,
                output: 80
            }
        );
    }

    /// The session file as Gemini CLI 0.61.0 appends to it: each reply with its
    /// tokens, a reply again once its tool calls are done.
    fn session_file(home: &Path) -> PathBuf {
        let chats = home.join(".gemini/tmp/w/chats");
        std::fs::create_dir_all(&chats).unwrap();
        let path = chats.join("session-2026-12-08T01-24-fa3482c6.jsonl");
        let lines = [
            r#"{"sessionId":"fa3482c6-2bd3-4fb5-9207-e2a06fe55a01","projectHash":"152c","startTime":"2026-12-08T01:24:30.652Z","lastUpdated":"2026-12-08T01:24:30.652Z","kind":"main"}"#,
            r#"{"id":"old","timestamp":"2026-12-07T00:00:00.000Z","type":"gemini","content":"","tokens":{"input":9000,"output":50,"cached":0,"thoughts":0,"tool":0,"total":9050},"model":"gemini-2.5-pro"}"#,
            r#"{"id":"730a","timestamp":"2026-12-08T01:24:30.958Z","type":"gemini","content":"","thoughts":[],"tokens":{"input":1000,"output":50,"cached":200,"thoughts":0,"tool":0,"total":1050},"model":"gemini-2.5-pro"}"#,
            r#"{"$set":{"lastUpdated":"2026-12-08T01:24:30.958Z"}}"#,
            r#"{"id":"730a","timestamp":"2026-12-08T01:24:30.958Z","type":"gemini","content":"","thoughts":[],"tokens":{"input":1000,"output":50,"cached":200,"thoughts":0,"tool":0,"total":1050},"model":"gemini-2.5-pro","toolCalls":[]}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn usage_so_far_comes_from_the_session_file() {
        let home = tempfile::tempdir().unwrap();
        let path = session_file(home.path());
        assert!(Gemini.session_kept(home.path(), "fa3482c6-2bd3-4fb5-9207-e2a06fe55a01"));
        assert!(!Gemini.session_kept(home.path(), "fa3482c6-0000-0000-0000-000000000000"));
        let (reader, _) = read(home.path(), &[INIT, TOOL_USE, TOOL_OK]);
        let one = Tokens {
            input: 800,
            cached_input: 200,
            output: 50,
        };
        assert_eq!(reader.spent()[0].tokens, one);
        assert_eq!(reader.turns(), Some(1));
        // Read on from where it stopped; a half-written line waits.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        file.write_all(br#"{"id":"2456","timestamp":"2026-12-08T01:24:31.130Z","type":"gemini","content":"done","tokens":{"input":1000,"output":50,"cached":200,"thoughts":0,"tool":0,"total":1050},"#).unwrap();
        let (mut reader, _) = read(home.path(), &[INIT, TOOL_USE, TOOL_OK]);
        reader.line(TEXT);
        assert_eq!(reader.spent()[0].tokens, one);
        file.write_all(b"\"model\":\"gemini-2.5-pro\"}\n").unwrap();
        reader.line(r#"{"type":"error","severity":"warning","message":"w"}"#);
        assert_eq!(reader.spent()[0].tokens.input, 1600);
        assert_eq!(
            reader.outcome(None).end,
            End::Failure("the agent exited with a signal".into())
        );
    }

    #[test]
    fn the_invocation_reads_the_prompt_from_stdin() {
        let home = tempfile::tempdir().unwrap();
        let env = vec![("GEMINI_API_KEY".to_owned(), "k".to_owned())];
        let result = home.path().join("r.json");
        let launch = Launch {
            extra_args: &["--debug".to_owned()],
            max_turns: 7,
            resume: Some("fa3482c6-2bd3-4fb5-9207-e2a06fe55a01"),
            ..test_launch(home.path(), &env, &result)
        };
        let inv = Gemini.invocation(&launch, "do it".into()).unwrap();
        assert_eq!(
            inv.argv.join(" "),
            "gemini -p  --output-format stream-json --approval-mode yolo --skip-trust --model gemini-2.5-pro --resume fa3482c6-2bd3-4fb5-9207-e2a06fe55a01 --debug"
        );
        assert_eq!(inv.stdin.as_deref(), Some("do it"));
        let settings: Value = serde_json::from_str(&inv.home_files[0].1).unwrap();
        assert_eq!(
            settings["security"]["auth"]["selectedType"],
            "gemini-api-key"
        );
        assert_eq!(settings["model"]["maxSessionTurns"], 7);
        let no_key = Launch { env: &[], ..launch };
        assert!(Gemini
            .invocation(&no_key, String::new())
            .unwrap_err()
            .contains("GEMINI_API_KEY"));
    }
}
