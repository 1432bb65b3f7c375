//! OpenCode (npm `opencode-ai`): `opencode run --format json -m MODEL [-s SESSION]`
//! with the prompt on stdin (a positional prompt would reach the model wrapped in
//! quotes), then the project's `--agent-arg`s.
//!
//! Its configuration comes inline in `OPENCODE_CONFIG_CONTENT`: edits and shell
//! commands allowed (it runs unattended: a call that would ask is auto-rejected), the
//! session-title call off (OpenCode reports no usage for it), autoupdate and sharing
//! off. When the worker gives `OPENAI_BASE_URL` (and `OPENAI_API_KEY`) the config
//! also holds a provider `damascus` (`@ai-sdk/openai-compatible` at that URL) with the
//! project's model at its price from the price table, and the run is
//! `-m damascus/MODEL`; otherwise the model goes as given (`PROVIDER/MODEL`) to
//! OpenCode's own providers. Models.dev, LSP downloads and the background npm install
//! of `@opencode-ai/plugin` into `~/.config/opencode` are kept off (the last by a
//! package-lock there that already names it), so it talks only to the model.
//!
//! Its stdout is one JSON event a line, `{type, timestamp, sessionID, part}`:
//! `step_start`, `text`, `tool_use` (a finished call: `part.tool`, `part.state`
//! `{status, input, output | error}`), `step_finish` (one model call:
//! `part.tokens {input, output, reasoning, cache {read, write}}`, `input` not counting
//! cache reads, and `part.cost` in USD at the configured price) and `error` (an API
//! error; it exits 1, after retrying a retryable one for about a minute). A refused
//! tool call is a `tool_use` in state `error` while the run exits 0: the run is a
//! failure with that reason.
//!
//! Spend: it has no budget of its own; its usage is summed over `step_finish` events,
//! as dollars when Damascus wrote the price into its configuration (else as tokens,
//! which Damascus prices), so Damascus stops it when that reaches the reservation.
//! Sessions live in its SQLite database under `~/.local/share/opencode` in the item's
//! HOME; `-s SESSION` continues one, resending its history.

use std::path::{Path, PathBuf};

use damascus_core::prices::{FoundPrice, Tokens};
use damascus_core::transcript::{keep, tool_target, TranscriptEvent};
use damascus_core::AgentKind;
use serde_json::{json, Value};

use super::{Agent, End, Invocation, Launch, ModelSpend, Outcome, StreamReader};

pub(crate) struct Opencode;

/// The provider Damascus configures when the worker gives an OpenAI-compatible URL.
const PROVIDER: &str = "damascus";

/// Where OpenCode keeps its sessions, under HOME.
const DATA_DIR: &str = ".local/share/opencode";

impl Agent for Opencode {
    fn kind(&self) -> AgentKind {
        AgentKind::Opencode
    }

    fn program(&self) -> Option<&'static str> {
        Some("opencode")
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g opencode-ai"
    }

    fn env_names(&self) -> &'static [&'static str] {
        &["OPENAI_BASE_URL", "OPENAI_API_KEY"]
    }

    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String> {
        let base_url = base_url(launch);
        let model = match (base_url, launch.model) {
            (Some(_), None) => {
                return Err("the worker gives OPENAI_BASE_URL, so OpenCode runs the project's model there: name it with --agent-model (e.g. gpt-5)".into())
            }
            (Some(_), Some(model)) => Some(format!("{PROVIDER}/{model}")),
            (None, model) => model.map(str::to_owned),
        };
        let provider = match (base_url, launch.model) {
            (Some(url), Some(model)) => Some(provider_config(
                url,
                launch.var("OPENAI_API_KEY").unwrap_or_default(),
                model,
                launch.price,
            )),
            _ => None,
        };
        let mut argv: Vec<String> = ["opencode", "run", "--format", "json"]
            .map(String::from)
            .to_vec();
        if let Some(model) = model {
            argv.extend(["-m".into(), model]);
        }
        if let Some(session) = launch.resume {
            argv.extend(["-s".into(), session.to_owned()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        let env = [
            ("OPENCODE_CONFIG_CONTENT", config(provider).to_string()),
            ("OPENCODE_DISABLE_MODELS_FETCH", "1".into()),
            ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
            ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".into()),
            ("OPENCODE_DISABLE_SHARE", "1".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        Ok(Invocation {
            argv,
            env,
            stdin: Some(prompt),
            home_files: plugin_already_installed(),
        })
    }

    fn reader(&self, launch: &Launch<'_>) -> Box<dyn StreamReader> {
        let priced_in_config =
            base_url(launch).is_some() && launch.model.is_some() && launch.price.is_some();
        Box::new(EventReader {
            model: launch.model.map(str::to_owned),
            dollars: priced_in_config,
            ..EventReader::default()
        })
    }

    fn session_kept(&self, home: &Path, id: &str) -> bool {
        session_in_database(&home.join(DATA_DIR), id)
    }
}

/// The worker's OpenAI-compatible endpoint, when it gives one.
fn base_url<'a>(launch: &'a Launch<'_>) -> Option<&'a str> {
    launch
        .var("OPENAI_BASE_URL")
        .filter(|url| !url.trim().is_empty())
}

/// The configuration OpenCode reads from `OPENCODE_CONFIG_CONTENT`.
fn config(provider: Option<Value>) -> Value {
    let mut config = json!({
        "autoupdate": false,
        "share": "disabled",
        // The session title is one more model call whose usage no event reports.
        "agent": {"title": {"disable": true}},
        // Unattended: a call that would ask is auto-rejected, so allow the work.
        "permission": {"edit": "allow", "bash": "allow"},
    });
    if let Some(provider) = provider {
        config["provider"] = json!({ PROVIDER: provider });
    }
    config
}

/// The `damascus` provider: the worker's OpenAI-compatible endpoint, holding `model`
/// at its price (USD per million tokens), so OpenCode's `cost` is Damascus's figure.
fn provider_config(base_url: &str, key: &str, model: &str, price: Option<&FoundPrice>) -> Value {
    let mut entry = json!({});
    if let Some(found) = price {
        entry["cost"] = json!({
            "input": found.price.input,
            "output": found.price.output,
            "cache_read": found.price.cached_input,
        });
    }
    json!({
        "npm": "@ai-sdk/openai-compatible",
        "name": "Damascus",
        "options": {"baseURL": base_url, "apiKey": key},
        "models": { model: entry },
    })
}

/// Files that make OpenCode skip its background `npm install @opencode-ai/plugin` in
/// `~/.config/opencode` (it installs when `node_modules` is missing or its lock does
/// not name the package); no plugin is used.
fn plugin_already_installed() -> Vec<(PathBuf, String)> {
    vec![
        (
            PathBuf::from(".config/opencode/package-lock.json"),
            json!({"packages": {"": {"dependencies": {"@opencode-ai/plugin": "*"}}}}).to_string(),
        ),
        (
            PathBuf::from(".config/opencode/node_modules/.damascus"),
            "OpenCode's plugin install is skipped by Damascus\n".into(),
        ),
    ]
}

/// Whether OpenCode's database under `dir` (`opencode.db`, or its write-ahead log
/// before a checkpoint) holds session `id`.
fn session_in_database(dir: &Path, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    ["opencode.db", "opencode.db-wal"].iter().any(|name| {
        std::fs::read(dir.join(name)).is_ok_and(|bytes| {
            bytes
                .windows(id.len())
                .any(|window| window == id.as_bytes())
        })
    })
}

/// Reads OpenCode's JSON events.
#[derive(Default)]
struct EventReader {
    /// The model as the project names it (the events do not say).
    model: Option<String>,
    /// Whether `part.cost` is Damascus's own price (else tokens are priced).
    dollars: bool,
    session: Option<String>,
    tokens: Tokens,
    usd: f64,
    steps: i64,
    /// Tool calls that were refused: the tool and why.
    refused: Vec<(String, String)>,
    /// The last error event's message.
    error: Option<String>,
}

impl StreamReader for EventReader {
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent> {
        let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if self.session.is_none() {
            if let Some(session) = value["sessionID"].as_str() {
                self.session = Some(session.to_owned());
                events.push(TranscriptEvent::Started {
                    session: self.session.clone(),
                    model: self.model.clone(),
                });
            }
        }
        let part = &value["part"];
        match value["type"].as_str() {
            Some("text") => events.push(TranscriptEvent::Message {
                text: keep(part["text"].as_str().unwrap_or_default()),
            }),
            Some("tool_use") => events.extend(self.tool_use(part)),
            Some("step_finish") => events.extend(self.step_finish(part)),
            Some("error") => {
                let text = error_text(&value["error"]);
                self.error = Some(text.clone());
                events.push(TranscriptEvent::Error { text: keep(&text) });
            }
            _ => {}
        }
        events
    }

    fn spent(&self) -> Vec<ModelSpend> {
        if self.steps == 0 {
            return Vec::new();
        }
        vec![ModelSpend {
            model: self.model.clone(),
            tokens: self.tokens,
            usd: self.dollars.then_some(self.usd),
        }]
    }

    fn outcome(&mut self, exit: Option<i32>) -> Outcome {
        let end = match exit {
            Some(0) if !self.refused.is_empty() => End::Failure(self.refusal()),
            Some(0) => match &self.error {
                Some(error) => End::Failure(format!("OpenCode reported an error: {error}")),
                None => End::Success,
            },
            other => super::exit_failure(other, self.error.as_deref()),
        };
        Outcome {
            end,
            session: self.session.clone(),
            spend: self.spent(),
            turns: (self.steps > 0).then_some(self.steps),
        }
    }
}

impl EventReader {
    /// A finished tool call: the call and its result.
    fn tool_use(&mut self, part: &Value) -> Vec<TranscriptEvent> {
        let id = part["callID"].as_str().unwrap_or_default().to_owned();
        let tool = part["tool"].as_str().unwrap_or("tool").to_owned();
        let state = &part["state"];
        let ok = state["status"] != "error";
        let text = if ok {
            text_of(&state["output"])
        } else {
            text_of(&state["error"])
        };
        if !ok && is_refusal(&text) {
            self.refused.push((tool.clone(), text.clone()));
        }
        vec![
            TranscriptEvent::ToolCall {
                id: id.clone(),
                tool,
                target: keep(&tool_target(&state["input"])),
            },
            TranscriptEvent::ToolResult {
                id,
                ok,
                text: keep(&text),
            },
        ]
    }

    /// One model call's usage; the last step (not ending in tool calls) is the result.
    fn step_finish(&mut self, part: &Value) -> Vec<TranscriptEvent> {
        let tokens = &part["tokens"];
        let count = |v: &Value| v.as_i64().unwrap_or(0);
        let step = Tokens {
            // Cache writes have no price of their own in the table: priced as input.
            input: count(&tokens["input"]) + count(&tokens["cache"]["write"]),
            cached_input: count(&tokens["cache"]["read"]),
            output: count(&tokens["output"]) + count(&tokens["reasoning"]),
        };
        self.tokens.input += step.input;
        self.tokens.cached_input += step.cached_input;
        self.tokens.output += step.output;
        self.usd += part["cost"].as_f64().unwrap_or(0.0);
        self.steps += 1;
        let mut events = vec![TranscriptEvent::Usage {
            model: self.model.clone(),
            tokens_in: step.input + step.cached_input,
            tokens_out: step.output,
        }];
        let reason = part["reason"].as_str().unwrap_or("unknown");
        if reason != "tool-calls" {
            events.push(TranscriptEvent::Result {
                ok: reason == "stop" && self.refused.is_empty() && self.error.is_none(),
                subtype: reason.to_owned(),
                usd: self.dollars.then_some(self.usd),
                turns: Some(self.steps),
                text: String::new(),
            });
        }
        events
    }

    fn refusal(&self) -> String {
        let (tool, why) = &self.refused[0];
        let tools: Vec<&str> = self.refused.iter().map(|(t, _)| t.as_str()).collect();
        format!(
            "OpenCode refused tool calls it tried to make ({}): {why}; allow the {tool} tool in the OpenCode permission configuration the agent gets (OPENCODE_PERMISSION, or the project's opencode.json)",
            tools.join(", ")
        )
    }
}

/// Whether a tool's error is a refused permission (asked and auto-rejected, or denied
/// by a rule), not the tool failing.
fn is_refusal(error: &str) -> bool {
    error.contains("rejected permission")
        || error.contains("prevents you from using this specific tool call")
}

/// An error event's message: its data's message, else its name.
fn error_text(error: &Value) -> String {
    error["data"]["message"]
        .as_str()
        .or(error["message"].as_str())
        .or(error["name"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string())
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::test_launch;

    // Lines from OpenCode 1.18.33 against a scripted server (ids shortened).
    const STEP_START: &str = r#"{"type":"step_start","timestamp":1796693176731,"sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","part":{"id":"prt_1","messageID":"msg_1","sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","snapshot":"307cce14","type":"step-start"}}"#;
    const BASH: &str = r#"{"type":"tool_use","timestamp":1796693176881,"sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","part":{"type":"tool","tool":"bash","callID":"call_1","state":{"status":"completed","input":{"command":"printf 'hello\\n' > hello.txt","description":"Write hello.txt"},"output":"(no output)","metadata":{"output":"(no output)","exit":0,"truncated":false},"title":"printf 'hello\\n' > hello.txt","time":{"start":1796693176703,"end":1796693176870}},"id":"prt_2","sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","messageID":"msg_1"}}"#;
    const TOOL_STEP: &str = r#"{"type":"step_finish","timestamp":1796693177015,"sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","part":{"id":"prt_3","reason":"tool-calls","snapshot":"b53a4df8","messageID":"msg_1","sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","type":"step-finish","tokens":{"total":1050,"input":800,"output":50,"reasoning":0,"cache":{"write":0,"read":200}},"cost":0.001525}}"#;
    const TEXT: &str = r#"{"type":"text","timestamp":1796693177195,"sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","part":{"id":"prt_4","messageID":"msg_2","sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","type":"text","text":"hello.txt now holds hello.","time":{"start":1796693177189,"end":1796693177192}}}"#;
    const LAST_STEP: &str = r#"{"type":"step_finish","timestamp":1796693177305,"sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","part":{"id":"prt_5","reason":"stop","snapshot":"b53a4df8","messageID":"msg_2","sessionID":"ses_dacbde0cdffepXY0eZbM04Bht1","type":"step-finish","tokens":{"total":1050,"input":800,"output":50,"reasoning":0,"cache":{"write":0,"read":200}},"cost":0.001525}}"#;
    const REJECTED: &str = r#"{"type":"tool_use","timestamp":1796693220422,"sessionID":"ses_dacbd4214ffe13OaJj8GL5OPdI","part":{"type":"tool","tool":"bash","callID":"call_7","state":{"status":"error","input":{"command":"printf 'hello\\n' > hello.txt","description":"Write hello.txt"},"error":"The user rejected permission to use this specific tool call.","time":{"start":1796693220147,"end":1796693220397}},"id":"prt_6","sessionID":"ses_dacbd4214ffe13OaJj8GL5OPdI","messageID":"msg_3"}}"#;
    const DENIED: &str = r#"{"type":"tool_use","timestamp":1796693237080,"sessionID":"ses_dacbce959ffesqkk3OoqiUXIPs","part":{"type":"tool","tool":"bash","callID":"call_10","state":{"status":"error","input":{"command":"printf 'hello\\n' > hello.txt","description":"Write hello.txt"},"error":"The user has specified a rule which prevents you from using this specific tool call. Here are some of the relevant rules [{\"permission\":\"bash\",\"pattern\":\"printf *\",\"action\":\"deny\"}]","time":{"start":1796693237009,"end":1796693237068}},"id":"prt_7","sessionID":"ses_dacbce959ffesqkk3OoqiUXIPs","messageID":"msg_4"}}"#;
    const API_ERROR: &str = r#"{"type":"error","timestamp":1796693206370,"sessionID":"ses_dacbd67fbffe20bDww8opE753H","error":{"name":"APIError","data":{"message":"scripted bad request","statusCode":400,"isRetryable":false,"responseBody":"{\"error\": {\"message\": \"scripted bad request\"}}","metadata":{"url":"http://127.0.0.1:18431/v1/chat/completions"}}}}"#;

    fn reader(dollars: bool) -> EventReader {
        EventReader {
            model: Some("gpt-5".into()),
            dollars,
            ..EventReader::default()
        }
    }

    fn lines(reader: &mut EventReader, lines: &[&str]) -> Vec<String> {
        lines
            .iter()
            .flat_map(|l| reader.line(l))
            .map(|e| e.line())
            .collect()
    }

    #[test]
    fn a_run_that_writes_a_file() {
        let mut reader = reader(true);
        let seen = lines(
            &mut reader,
            &[STEP_START, BASH, TOOL_STEP, STEP_START, TEXT, LAST_STEP],
        );
        assert_eq!(
            seen[..3],
            [
                "── agent started, model gpt-5, session ses_dacbde0cdffepXY0eZbM04Bht1",
                "→ bash printf 'hello\\n' > hello.txt",
                "  ← (no output)",
            ]
        );
        assert!(seen.contains(&"agent: hello.txt now holds hello.".to_owned()));
        let outcome = reader.outcome(Some(0));
        assert_eq!(outcome.end, End::Success);
        assert_eq!(
            outcome.session.as_deref(),
            Some("ses_dacbde0cdffepXY0eZbM04Bht1")
        );
        assert_eq!(outcome.turns, Some(2));
        let spend = &outcome.spend[0];
        assert_eq!(
            spend.tokens,
            Tokens {
                input: 1600,
                cached_input: 400,
                output: 100
            }
        );
        assert!((spend.usd.unwrap() - 0.00305).abs() < 1e-12);
    }

    #[test]
    fn tokens_without_a_configured_price_are_left_to_damascus() {
        let mut reader = reader(false);
        lines(&mut reader, &[STEP_START, TOOL_STEP]);
        assert_eq!(reader.spent()[0].usd, None);
        assert_eq!(reader.spent()[0].tokens.cached_input, 200);
    }

    #[test]
    fn refused_tool_calls_fail_a_run_that_exits_0() {
        for refused in [REJECTED, DENIED] {
            let mut reader = reader(true);
            let seen = lines(&mut reader, &[refused, TEXT, LAST_STEP]);
            assert!(seen[2].starts_with("  ✗ The user"), "{seen:?}");
            let End::Failure(why) = reader.outcome(Some(0)).end else {
                panic!("not a failure");
            };
            assert!(
                why.starts_with("OpenCode refused tool calls it tried to make (bash): The user"),
                "{why}"
            );
        }
    }

    #[test]
    fn an_api_error_and_exit_1() {
        let mut reader = reader(true);
        let seen = lines(&mut reader, &[API_ERROR]);
        assert_eq!(seen[1], "error: scripted bad request");
        let outcome = reader.outcome(Some(1));
        assert_eq!(
            outcome.end,
            End::Failure("the agent exited with 1: scripted bad request".into())
        );
        assert!(outcome.spend.is_empty());
    }

    #[test]
    fn the_command_line_and_configuration() {
        let price = damascus_core::prices::PriceTable::built_in()
            .find("gpt-5")
            .unwrap();
        let env = vec![
            ("OPENAI_BASE_URL".to_owned(), "http://model/v1".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "sk-x".to_owned()),
        ];
        let launch = Launch {
            model: Some("gpt-5"),
            extra_args: &["--variant".into(), "high".into()],
            resume: Some("ses_1"),
            price: Some(&price),
            ..test_launch(Path::new("/home"), &env, Path::new("/r"))
        };
        let run = Opencode.invocation(&launch, "do it".into()).unwrap();
        assert_eq!(
            run.argv.join(" "),
            "opencode run --format json -m damascus/gpt-5 -s ses_1 --variant high"
        );
        let config: Value = serde_json::from_str(
            &run.env
                .iter()
                .find(|(k, _)| k == "OPENCODE_CONFIG_CONTENT")
                .unwrap()
                .1,
        )
        .unwrap();
        let provider = &config["provider"]["damascus"];
        assert_eq!(provider["options"]["baseURL"], "http://model/v1");
        assert_eq!(provider["options"]["apiKey"], "sk-x");
        assert_eq!(
            provider["models"]["gpt-5"]["cost"],
            json!({"input": 1.25, "output": 10.0, "cache_read": 0.125})
        );
        assert_eq!(config["permission"]["bash"], "allow");

        let no_url = Launch {
            env: &[],
            model: Some("openai/gpt-5"),
            resume: None,
            extra_args: &[],
            ..launch
        };
        let run = Opencode.invocation(&no_url, "do it".into()).unwrap();
        assert_eq!(
            run.argv.join(" "),
            "opencode run --format json -m openai/gpt-5"
        );
    }

    #[test]
    fn a_session_is_found_in_the_database_or_its_log() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!session_in_database(dir.path(), "ses_1"));
        std::fs::write(dir.path().join("opencode.db-wal"), b"\0\0ses_1\0").unwrap();
        assert!(session_in_database(dir.path(), "ses_1"));
        assert!(!session_in_database(dir.path(), "ses_2"));
    }
}
