//! Codex CLI (npm `@openai/codex`): one non-interactive `codex exec` per run,
//!
//! ```text
//! codex exec --json --skip-git-repo-check -c sandbox_mode="workspace-write" \
//!     --disable plugins [-m MODEL] [AGENT_ARGS…] -
//! codex exec --json … [AGENT_ARGS…] resume THREAD_ID -      (a follow-up)
//! ```
//!
//! with the prompt on stdin (`-`) and `CODEX_HOME` set to `~/.codex` in the item's
//! HOME: Codex's own sandbox (bubblewrap, seccomp) fails every command when its home
//! is under the temporary directory ("bwrap: execvp codex-linux-sandbox"), so a HOME
//! under it gets `TMPDIR=~/.codex-tmp`. `--disable plugins` keeps it
//! from syncing plugins over the network; `~/.codex/config.toml` (written before each
//! run) turns off its update check, analytics and feedback, and, when the worker has
//! `OPENAI_BASE_URL`, makes that URL its model provider (`model_provider =
//! "damascus"`, the Responses API at `{OPENAI_BASE_URL}/responses`, the key from
//! `OPENAI_API_KEY`, else `CODEX_API_KEY`); without it Codex uses its default
//! provider and its own login.
//!
//! Sandbox: `workspace-write` by default (commands may write the worktree and /tmp,
//! not the network), given with `-c` so that an `--agent-arg` can replace it: `-s
//! danger-full-access` for a project whose agent Damascus already confines with
//! `--sandbox bwrap` (where Codex's own bubblewrap may not nest), `-s read-only` to
//! forbid writes. In `exec` Codex never asks for approval: a command its sandbox
//! refuses, or one asking for escalation, is answered "refused" to the model, and
//! Codex still exits 0.
//!
//! Parsed: the JSONL on stdout (`thread.started`, `item.started`/`item.completed`
//! for `command_execution`, `file_change`, `mcp_tool_call`, `web_search`,
//! `agent_message`, `error`; `turn.completed` with the usage, `turn.failed`, `error`),
//! and the thread's rollout file, `~/.codex/sessions/YYYY/MM/DD/rollout-…-THREAD.jsonl`
//! (Codex's own record of the thread). The rollout is read because stdout lacks three
//! things: usage before the run's end (stdout reports it once, at `turn.completed`;
//! the rollout has a `token_usage_record` after every model response), refused tool
//! calls (stdout shows nothing for them; the rollout has the call and its refusal, and
//! no `item_completed` for it), and the model Codex chose when none is named.
//!
//! Spend: tokens, no dollars (Damascus prices them; Codex has no budget flag, so
//! Damascus stops it when the priced usage reaches the reservation). Codex counts
//! usage per thread: a resumed run's `turn.completed` and `token_usage_record`s are
//! cumulative over every run of the thread. The reader takes the thread's total before
//! the run from the end of its rollout file (read when the reader is made, before
//! Codex starts) and records only what this run added. `input_tokens` include the
//! cached ones (OpenAI's convention); the spend's `input` excludes them.
//!
//! Session: the thread id of `thread.started`; it is kept while its rollout file is
//! under the item's HOME, and a follow-up resumes it with `resume THREAD_ID` (Codex
//! sends the whole thread again, then the new prompt as the last user message).
//!
//! Ends: exit 0 with `turn.completed` is success unless a tool call was refused (a
//! failure naming the call and Codex's answer); `turn.failed` or a non-zero exit
//! (every failure exits 1) is a failure with the turn's error, else the last `error`
//! event's message. An `error` event alone is not a failure: Codex reports its stream
//! retries that way ("Reconnecting... 1/5 (stream disconnected …)") and goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use damascus_core::prices::Tokens;
use damascus_core::transcript::TranscriptEvent;
use damascus_core::AgentKind;
use serde_json::Value;

use super::{Agent, End, Invocation, Launch, ModelSpend, Outcome, StreamReader};

pub(crate) struct Codex;

/// The temporary directory Codex gets inside the item's HOME when that HOME is under
/// the system's.
const TMP_DIR: &str = ".codex-tmp";

/// The provider Damascus configures for `OPENAI_BASE_URL`.
const PROVIDER: &str = "damascus";

/// The tools whose calls run something in the worktree: one of these answered without
/// having run was refused.
const ACTING_TOOLS: [&str; 5] = [
    "exec_command",
    "shell",
    "shell_command",
    "local_shell",
    "apply_patch",
];

/// The longest text of a refusal kept in a reason.
const REASON_CHARS: usize = 300;

impl Agent for Codex {
    fn kind(&self) -> AgentKind {
        AgentKind::Codex
    }

    fn program(&self) -> Option<&'static str> {
        Some("codex")
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @openai/codex"
    }

    fn env_names(&self) -> &'static [&'static str] {
        &["OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_API_KEY"]
    }

    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String> {
        let config = config_toml(launch)?;
        let mut argv: Vec<String> = [
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-c",
            "sandbox_mode=\"workspace-write\"",
            "--disable",
            "plugins",
        ]
        .map(String::from)
        .to_vec();
        if let Some(model) = launch.model {
            argv.extend(["-m".into(), model.to_owned()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        if let Some(thread) = launch.resume {
            argv.extend(["resume".into(), thread.to_owned()]);
        }
        argv.push("-".into());
        let mut env = vec![(
            "CODEX_HOME".into(),
            codex_home(launch.home).to_string_lossy().into_owned(),
        )];
        let mut home_files = vec![(PathBuf::from(".codex/config.toml"), config)];
        // Codex will not put its sandbox helpers under the temporary directory, and
        // runs every command unsandboxed-and-failing without them: a HOME under it (a
        // data dir in /tmp) gets a temporary directory of its own, inside HOME.
        if launch.home.starts_with(std::env::temp_dir()) {
            let tmp = launch.home.join(TMP_DIR);
            env.push(("TMPDIR".into(), tmp.to_string_lossy().into_owned()));
            home_files.push((Path::new(TMP_DIR).join(".keep"), String::new()));
        }
        Ok(Invocation {
            argv,
            env,
            stdin: Some(prompt),
            home_files,
        })
    }

    fn reader(&self, launch: &Launch<'_>) -> Box<dyn StreamReader> {
        Box::new(CodexReader::new(
            codex_home(launch.home),
            launch.model.map(str::to_owned),
            launch.resume,
        ))
    }

    fn session_kept(&self, home: &Path, id: &str) -> bool {
        !id.is_empty()
            && super::file_named_under(
                &codex_home(home).join("sessions"),
                &format!("-{id}.jsonl"),
                3,
            )
    }
}

/// Codex's home in the item's HOME (not under /tmp, where its sandbox fails).
fn codex_home(home: &Path) -> PathBuf {
    home.join(".codex")
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `~/.codex/config.toml`: no update check, analytics or feedback, and the worker's
/// `OPENAI_BASE_URL` as the model provider when it has one.
fn config_toml(launch: &Launch<'_>) -> Result<String, String> {
    let mut top = vec!["check_for_update_on_startup = false".to_owned()];
    let mut tables = vec![
        "[analytics]\nenabled = false".to_owned(),
        "[feedback]\nenabled = false".to_owned(),
    ];
    if let Some(url) = launch
        .var("OPENAI_BASE_URL")
        .filter(|u| !u.trim().is_empty())
    {
        let key = ["OPENAI_API_KEY", "CODEX_API_KEY"]
            .into_iter()
            .find(|name| launch.var(name).is_some_and(|v| !v.is_empty()))
            .ok_or(
                "the worker gives Codex OPENAI_BASE_URL but no key for it; set OPENAI_API_KEY (or CODEX_API_KEY) in the worker's environment",
            )?;
        top.push(format!("model_provider = {}", toml_string(PROVIDER)));
        tables.push(format!(
            "[model_providers.{PROVIDER}]\nname = \"the worker's OPENAI_BASE_URL\"\nbase_url = {}\nenv_key = {}\nwire_api = \"responses\"",
            toml_string(url.trim_end_matches('/')),
            toml_string(key)
        ));
    }
    Ok(format!("{}\n\n{}\n", top.join("\n"), tables.join("\n\n")))
}

/// The rollout file of thread `id` under `codex_home`
/// (`sessions/YYYY/MM/DD/rollout-…-ID.jsonl`).
fn rollout_file(codex_home: &Path, id: &str) -> Option<PathBuf> {
    if id.is_empty() || id.contains('/') {
        return None;
    }
    find_file(&codex_home.join("sessions"), &format!("-{id}.jsonl"), 3)
}

fn find_file(dir: &Path, suffix: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|entry| {
        let path = entry.path();
        if path.is_dir() {
            (depth > 0)
                .then(|| find_file(&path, suffix, depth - 1))
                .flatten()
        } else {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            (name.starts_with("rollout-") && name.ends_with(suffix)).then_some(path)
        }
    })
}

/// Token counts as Codex reports them: `input` includes `cached`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    input: i64,
    cached: i64,
    output: i64,
}

impl Usage {
    fn from_json(v: &Value) -> Option<Usage> {
        let count = |name: &str| v[name].as_i64().unwrap_or(0).max(0);
        v.is_object().then(|| Usage {
            input: count("input_tokens"),
            cached: count("cached_input_tokens"),
            output: count("output_tokens"),
        })
    }

    /// What was added since `before`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            input: (self.input - before.input).max(0),
            cached: (self.cached - before.cached).max(0),
            output: (self.output - before.output).max(0),
        }
    }

    fn tokens(self) -> Tokens {
        Tokens {
            input: (self.input - self.cached).max(0),
            cached_input: self.cached,
            output: self.output,
        }
    }
}

/// What the rollout file says about the thread, from the lines read so far.
#[derive(Debug, Default)]
struct Rollout {
    /// The thread's usage after its latest model response.
    total: Option<Usage>,
    /// Model responses recorded (`token_usage_record`s).
    responses: i64,
    /// The model Codex uses (its settings, or a turn's context).
    model: Option<String>,
    /// Calls of `ACTING_TOOLS` not yet answered: call id → tool and its arguments.
    calls: BTreeMap<String, (String, String)>,
    /// Calls that ran (an `item_completed` of a command or a file change).
    ran: BTreeSet<String>,
}

impl Rollout {
    /// Reads one line of the rollout; returns the refused call it shows, if any.
    fn line(&mut self, line: &str) -> Option<Refusal> {
        let value: Value = serde_json::from_str(line.trim()).ok()?;
        let payload = &value["payload"];
        match (value["type"].as_str()?, payload["type"].as_str()) {
            ("token_usage_record", _) => {
                self.responses += 1;
                self.total = Usage::from_json(&payload["thread_token_usage"]).or(self.total);
            }
            ("event_msg", Some("token_count")) => {
                self.total = Usage::from_json(&payload["info"]["total_token_usage"]).or(self.total);
            }
            ("event_msg", Some("thread_settings_applied")) => {
                self.take_model(&payload["thread_settings"]["model"]);
            }
            ("turn_context", _) => self.take_model(&payload["model"]),
            ("event_msg", Some("item_completed")) => {
                let item = &payload["item"];
                if matches!(
                    item["type"].as_str(),
                    Some("CommandExecution" | "FileChange")
                ) {
                    if let Some(id) = item["id"].as_str() {
                        self.ran.insert(id.to_owned());
                    }
                }
            }
            ("response_item", Some(kind)) => return self.response_item(kind, payload),
            _ => {}
        }
        None
    }

    fn take_model(&mut self, model: &Value) {
        if let Some(model) = model.as_str().filter(|m| !m.is_empty()) {
            self.model = Some(model.to_owned());
        }
    }

    fn response_item(&mut self, kind: &str, item: &Value) -> Option<Refusal> {
        let call_id = item["call_id"].as_str()?.to_owned();
        match kind {
            "function_call" | "custom_tool_call" | "local_shell_call" => {
                let tool = item["name"].as_str().unwrap_or("local_shell").to_owned();
                if ACTING_TOOLS.contains(&tool.as_str()) {
                    let input = match &item["arguments"] {
                        Value::String(text) => text.clone(),
                        Value::Null => item["input"].as_str().unwrap_or_default().to_owned(),
                        other => other.to_string(),
                    };
                    self.calls.insert(call_id, (tool, command_of(&input)));
                }
                None
            }
            "function_call_output" | "custom_tool_call_output" => {
                let (tool, target) = self.calls.remove(&call_id)?;
                let output = output_text(&item["output"]);
                // A command still running has answered without its item yet.
                if self.ran.contains(&call_id) || output.contains("Process running with session ID")
                {
                    return None;
                }
                Some(Refusal {
                    call_id,
                    tool,
                    target,
                    answer: refusal_text(&output),
                })
            }
            _ => None,
        }
    }
}

/// The command a shell call's arguments name (`cmd`, or `command` as a list or a
/// string), else the arguments as given.
fn command_of(arguments: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(arguments) else {
        return arguments.to_owned();
    };
    match (&value["cmd"], &value["command"]) {
        (Value::String(cmd), _) | (_, Value::String(cmd)) => cmd.clone(),
        (_, Value::Array(parts)) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => arguments.to_owned(),
    }
}

/// A tool output as text (a string, or content items with text).
fn output_text(output: &Value) -> String {
    match output {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(_) => output["content"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| output.to_string()),
        _ => String::new(),
    }
}

/// What a refused call was told: the command's output when Codex ran it in its
/// sandbox (after its `Output:` header), else Codex's message; shortened.
fn refusal_text(output: &str) -> String {
    let said = output
        .split_once("\nOutput:\n")
        .map(|(_, out)| out)
        .filter(|out| !out.trim().is_empty())
        .unwrap_or(output)
        .trim();
    match said.char_indices().nth(REASON_CHARS) {
        Some((at, _)) => format!("{}…", &said[..at]),
        None => said.to_owned(),
    }
}

/// A tool call Codex answered without running it.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    call_id: String,
    tool: String,
    target: String,
    answer: String,
}

/// The rollout file being followed: where it is and how far it was read.
#[derive(Debug, Default)]
struct Follow {
    path: Option<PathBuf>,
    offset: u64,
    rollout: Rollout,
}

impl Follow {
    /// Reads the complete lines added to the file since the last read.
    fn read_new(&mut self) -> Vec<Refusal> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        // A line being written is read once it is whole.
        let Some(end) = text.rfind('\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        text[..end]
            .lines()
            .filter_map(|line| self.rollout.line(line))
            .collect()
    }
}

/// Reads one run's JSONL and follows its thread's rollout file.
struct CodexReader {
    codex_home: PathBuf,
    /// `--agent-model`, when the project names one.
    model: Option<String>,
    thread: Option<String>,
    follow: Follow,
    /// The thread's usage before this run (a resumed thread's earlier runs).
    before: Usage,
    /// Responses recorded before this run.
    responses_before: i64,
    /// The thread's usage at `turn.completed` (cumulative over the thread).
    completed: Option<Usage>,
    /// The message of `turn.failed`.
    failure: Option<String>,
    /// The last `error` event's message: a retry notice ("Reconnecting... 1/5") the
    /// run may recover from, or the error it exits with.
    last_error: Option<String>,
    refusals: Vec<Refusal>,
    last_message: String,
}

impl CodexReader {
    fn new(codex_home: PathBuf, model: Option<String>, resume: Option<&str>) -> CodexReader {
        let mut reader = CodexReader {
            codex_home,
            model,
            thread: None,
            follow: Follow::default(),
            before: Usage::default(),
            responses_before: 0,
            completed: None,
            failure: None,
            last_error: None,
            refusals: Vec::new(),
            last_message: String::new(),
        };
        if let Some(thread) = resume {
            // What the thread used before: everything its rollout holds now.
            reader.thread = Some(thread.to_owned());
            reader.follow.path = rollout_file(&reader.codex_home, thread);
            reader.follow.read_new();
            reader.follow.rollout.calls.clear();
            reader.before = reader.follow.rollout.total.unwrap_or_default();
            reader.responses_before = reader.follow.rollout.responses;
        }
        reader
    }

    /// Reads what the rollout file gained, and the transcript events of refusals in it.
    fn poll_rollout(&mut self) -> Vec<TranscriptEvent> {
        if self.follow.path.is_none() {
            if let Some(thread) = &self.thread {
                self.follow.path = rollout_file(&self.codex_home, thread);
            }
        }
        let refused = self.follow.read_new();
        let events = refused
            .iter()
            .flat_map(|r| {
                [
                    TranscriptEvent::ToolCall {
                        id: r.call_id.clone(),
                        tool: r.tool.clone(),
                        target: r.target.clone(),
                    },
                    TranscriptEvent::ToolResult {
                        id: r.call_id.clone(),
                        ok: false,
                        text: format!("refused: {}", r.answer),
                    },
                ]
            })
            .collect();
        self.refusals.extend(refused);
        events
    }

    /// This run's usage so far.
    fn usage(&self) -> Usage {
        let total = match (self.completed, self.follow.rollout.total) {
            (Some(done), Some(seen)) if seen.input + seen.output > done.input + done.output => seen,
            (Some(done), _) => done,
            (None, Some(seen)) => seen,
            (None, None) => return Usage::default(),
        };
        total.since(self.before)
    }

    fn model_name(&self) -> Option<String> {
        self.model
            .clone()
            .or_else(|| self.follow.rollout.model.clone())
    }

    fn turns(&self) -> Option<i64> {
        let responses = self.follow.rollout.responses - self.responses_before;
        (responses > 0).then_some(responses)
    }

    /// Why the run failed although Codex says it completed: its refused tool calls.
    fn refused(&self) -> Option<String> {
        let first = self.refusals.first()?;
        let more = match self.refusals.len() - 1 {
            0 => String::new(),
            n => format!(
                " (and {n} more refused call{})",
                if n == 1 { "" } else { "s" }
            ),
        };
        // Codex's sandbox refuses every command when its home is under /tmp.
        let hint = if self.codex_home.starts_with("/tmp") {
            format!(
                "Codex's sandbox refuses every command when its home ({}) is under /tmp: move the worker's data directory out of /tmp, or give the project the agent args `-s danger-full-access` when Damascus confines the agent itself (--sandbox bwrap)",
                self.codex_home.display()
            )
        } else {
            "let it write the worktree (its sandbox is workspace-write unless the project's agent args change it)".to_owned()
        };
        Some(format!(
            "Codex refused the agent's tool call {} `{}`: {}{more}; {hint}",
            first.tool, first.target, first.answer
        ))
    }

    fn item_events(&mut self, started: bool, item: &Value) -> Vec<TranscriptEvent> {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        let call = |tool: &str, target: String| TranscriptEvent::ToolCall {
            id: id.clone(),
            tool: tool.to_owned(),
            target,
        };
        let status_ok = item["status"] == "completed";
        match item["type"].as_str().unwrap_or_default() {
            "command_execution" => {
                let command = item["command"].as_str().unwrap_or_default().to_owned();
                if started {
                    return vec![call("shell", command)];
                }
                vec![TranscriptEvent::ToolResult {
                    id: id.clone(),
                    ok: status_ok && item["exit_code"].as_i64() == Some(0),
                    text: item["aggregated_output"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                }]
            }
            "file_change" if !started => {
                let paths = item["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["path"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    call("apply_patch", paths),
                    TranscriptEvent::ToolResult {
                        id: id.clone(),
                        ok: status_ok,
                        text: item["status"].as_str().unwrap_or_default().to_owned(),
                    },
                ]
            }
            "mcp_tool_call" if started => {
                let tool = format!(
                    "{}/{}",
                    item["server"].as_str().unwrap_or_default(),
                    item["tool"].as_str().unwrap_or_default()
                );
                vec![call(&tool, item["arguments"].to_string())]
            }
            "mcp_tool_call" => vec![TranscriptEvent::ToolResult {
                id: id.clone(),
                ok: status_ok,
                text: item["error"]["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| item["result"].to_string()),
            }],
            "web_search" if started => {
                vec![call(
                    "web_search",
                    item["query"].as_str().unwrap_or_default().to_owned(),
                )]
            }
            "agent_message" if !started => {
                let text = item["text"].as_str().unwrap_or_default().to_owned();
                self.last_message = text.clone();
                vec![TranscriptEvent::Message { text }]
            }
            // Codex reports warnings as error items (an unknown model's metadata);
            // the run goes on, so they are not its failure.
            "error" if !started => vec![TranscriptEvent::Error {
                text: item["message"].as_str().unwrap_or_default().to_owned(),
            }],
            _ => Vec::new(),
        }
    }

    fn turn_completed(&mut self, usage: &Value) -> Vec<TranscriptEvent> {
        self.completed = Usage::from_json(usage);
        let run = self.usage();
        let refused = self.refused();
        vec![
            TranscriptEvent::Usage {
                model: self.model_name(),
                tokens_in: run.input,
                tokens_out: run.output,
            },
            TranscriptEvent::Result {
                ok: refused.is_none(),
                subtype: if refused.is_some() {
                    "tools_refused"
                } else {
                    "success"
                }
                .into(),
                usd: None,
                turns: self.turns(),
                text: refused.unwrap_or_else(|| self.last_message.clone()),
            },
        ]
    }

    fn turn_failed(&mut self, message: &str) -> Vec<TranscriptEvent> {
        let message = error_message(message);
        self.failure.get_or_insert(message.clone());
        vec![TranscriptEvent::Result {
            ok: false,
            subtype: "turn_failed".into(),
            usd: None,
            turns: self.turns(),
            text: message,
        }]
    }

    fn error(&mut self, message: &str) -> Vec<TranscriptEvent> {
        let message = error_message(message);
        self.last_error = Some(message.clone());
        vec![TranscriptEvent::Error { text: message }]
    }

    /// What the output says went wrong: the turn's failure, else the last error.
    fn said(&self) -> Option<&str> {
        self.failure.as_deref().or(self.last_error.as_deref())
    }
}

/// Codex's error message, with the API's own message drawn out of a JSON body.
fn error_message(message: &str) -> String {
    serde_json::from_str::<Value>(message)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|inner| format!("{inner} ({message})"))
        .unwrap_or_else(|| message.to_owned())
}

impl StreamReader for CodexReader {
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent> {
        let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if value["type"] == "thread.started" {
            self.thread = value["thread_id"].as_str().map(str::to_owned);
            events.push(TranscriptEvent::Started {
                session: self.thread.clone(),
                model: self.model.clone(),
            });
        }
        events.extend(self.poll_rollout());
        match value["type"].as_str().unwrap_or_default() {
            "item.started" => events.extend(self.item_events(true, &value["item"])),
            "item.completed" => events.extend(self.item_events(false, &value["item"])),
            "turn.completed" => events.extend(self.turn_completed(&value["usage"])),
            "turn.failed" => {
                let message = value["error"]["message"].as_str().unwrap_or("turn failed");
                events.extend(self.turn_failed(message));
            }
            "error" => {
                let message = value["message"].as_str().unwrap_or("error");
                events.extend(self.error(message));
            }
            _ => {}
        }
        events
    }

    fn spent(&self) -> Vec<ModelSpend> {
        let usage = self.usage();
        if usage == Usage::default() {
            return Vec::new();
        }
        vec![ModelSpend {
            model: self.model_name(),
            tokens: usage.tokens(),
            usd: None,
        }]
    }

    fn outcome(&mut self, exit: Option<i32>) -> Outcome {
        self.poll_rollout();
        let end = match (exit, &self.failure, self.refused()) {
            (Some(0), Some(failure), _) => End::Failure(format!("Codex failed: {failure}")),
            (Some(0), None, Some(refused)) => End::Failure(refused),
            (Some(0), None, None) if self.completed.is_some() => End::Success,
            (Some(0), None, None) => End::Failure(format!(
                "Codex exited without completing its turn (no turn.completed in its output){}",
                self.last_error
                    .as_deref()
                    .map(|e| format!("; its last error: {e}"))
                    .unwrap_or_default()
            )),
            (other, _, _) => super::exit_failure(other, self.said()),
        };
        Outcome {
            end,
            session: self.thread.clone(),
            spend: self.spent(),
            turns: self.turns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::test_launch;

    /// Lines captured from `codex exec --json` 0.169.0 against a scripted server.
    const STARTED: &str =
        r#"{"type":"thread.started","thread_id":"01a25340-968f-7a91-8ccf-333193845a86"}"#;
    const WARNING: &str = r#"{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `gpt-5-codex` not found. Defaulting to fallback metadata; this can degrade performance and cause issues."}}"#;
    const COMMAND_STARTED: &str = r#"{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \"printf 'hello\\\\n' > hello.txt\"","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#;
    const COMMAND_DONE: &str = r#"{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \"printf 'hello\\\\n' > hello.txt\"","aggregated_output":"","exit_code":0,"status":"completed"}}"#;
    const MESSAGE: &str = r#"{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"hello.txt holds hello."}}"#;
    const COMPLETED: &str = r#"{"type":"turn.completed","usage":{"input_tokens":2400,"cached_input_tokens":400,"cache_write_input_tokens":0,"output_tokens":100,"reasoning_output_tokens":20}}"#;
    const COMPLETED_AGAIN: &str = r#"{"type":"turn.completed","usage":{"input_tokens":4800,"cached_input_tokens":800,"cache_write_input_tokens":0,"output_tokens":200,"reasoning_output_tokens":40}}"#;
    const ERROR: &str = r#"{"type":"error","message":"{\"error\":{\"message\":\"bad model thing\",\"type\":\"invalid_request_error\"}}"}"#;
    const RETRY: &str = r#"{"type":"error","message":"Reconnecting... 1/5 (stream disconnected before completion: stream closed before response.completed)"}"#;
    const FAILED: &str = r#"{"type":"turn.failed","error":{"message":"{\"error\":{\"message\":\"bad model thing\",\"type\":\"invalid_request_error\"}}"}}"#;

    /// Rollout lines (shortened to the fields read) of the same runs.
    const USAGE_1: &str = r#"{"timestamp":"2026-12-08T01:24:32.101Z","type":"token_usage_record","payload":{"thread_id":"t","response_id":"resp_1","usage":{"input_tokens":1200,"cached_input_tokens":200,"output_tokens":50,"reasoning_output_tokens":10},"thread_token_usage":{"input_tokens":1200,"cached_input_tokens":200,"output_tokens":50,"reasoning_output_tokens":10,"total_tokens":1250}}}"#;
    const USAGE_2: &str = r#"{"timestamp":"2026-12-08T01:24:32.201Z","type":"token_usage_record","payload":{"thread_id":"t","response_id":"resp_2","usage":{"input_tokens":1200,"cached_input_tokens":200,"output_tokens":50},"thread_token_usage":{"input_tokens":2400,"cached_input_tokens":400,"output_tokens":100,"reasoning_output_tokens":20,"total_tokens":2500}}}"#;
    const SETTINGS: &str = r#"{"type":"event_msg","payload":{"type":"thread_settings_applied","thread_id":"t","thread_settings":{"model":"gpt-5-codex","model_provider_id":"damascus","approval_policy":"never"}}}"#;
    const CALL: &str = r#"{"type":"response_item","payload":{"type":"function_call","id":"fc_1","name":"exec_command","arguments":"{\"cmd\": \"printf 'hello\\\\n' > hello.txt\"}","call_id":"call_1"}}"#;
    const RAN: &str = r#"{"type":"event_msg","payload":{"type":"item_completed","thread_id":"t","item":{"type":"CommandExecution","id":"call_1","command":["/bin/bash","-lc","printf 'hello\\n' > hello.txt"],"status":"completed","aggregated_output":"","exit_code":0}}}"#;
    const OUTPUT: &str = r#"{"type":"response_item","payload":{"type":"function_call_output","call_id":"call_1","output":"Chunk ID: 6f6431\nWall time: 0.0000 seconds\nProcess exited with code 0\nOriginal token count: 0\nOutput:\n"}}"#;
    const DENIED: &str = r#"{"type":"response_item","payload":{"type":"function_call_output","call_id":"call_1","output":"Chunk ID: f3b079\nWall time: 0.0000 seconds\nProcess exited with code 1\nOriginal token count: 13\nOutput:\n/bin/bash: line 1: hello.txt: Read-only file system\n"}}"#;
    const REJECTED: &str = r#"{"type":"response_item","payload":{"type":"function_call_output","call_id":"call_1","output":"approval policy is Never; reject command — you cannot ask for escalated permissions if the approval policy is Never"}}"#;
    const RUNNING: &str = r#"{"type":"response_item","payload":{"type":"function_call_output","call_id":"call_1","output":"Chunk ID: 6c41c9\nWall time: 0.3017 seconds\nProcess running with session ID 55340\nOriginal token count: 0\nOutput:\n"}}"#;

    const THREAD: &str = "01a25340-968f-7a91-8ccf-333193845a86";

    /// A CODEX_HOME whose thread `THREAD` has `lines` in its rollout.
    fn home_with(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("sessions/2026/12/08");
        std::fs::create_dir_all(&day).unwrap();
        let file = day.join(format!("rollout-2026-12-08T01-24-31-{THREAD}.jsonl"));
        write_lines(&file, lines);
        (dir, file)
    }

    fn write_lines(file: &Path, lines: &[&str]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap();
        for line in lines {
            writeln!(f, "{line}").unwrap();
        }
    }

    fn tokens(input: i64, cached: i64, output: i64) -> Tokens {
        Tokens {
            input,
            cached_input: cached,
            output,
        }
    }

    #[test]
    fn a_run_gives_its_transcript_usage_and_thread() {
        let (dir, file) = home_with(&[SETTINGS]);
        let mut r = CodexReader::new(dir.path().to_path_buf(), Some("gpt-5-codex".into()), None);
        let started = r.line(STARTED);
        assert_eq!(
            started,
            [TranscriptEvent::Started {
                session: Some(THREAD.into()),
                model: Some("gpt-5-codex".into())
            }]
        );
        assert!(matches!(
            &r.line(WARNING)[..],
            [TranscriptEvent::Error { .. }]
        ));
        write_lines(&file, &[CALL, USAGE_1]);
        assert!(matches!(
            &r.line(COMMAND_STARTED)[..],
            [TranscriptEvent::ToolCall { tool, target, .. }] if tool == "shell" && target.contains("hello.txt")
        ));
        // Usage shows before the run ends, from the rollout.
        assert_eq!(r.spent()[0].tokens, tokens(1000, 200, 50));
        write_lines(&file, &[RAN, OUTPUT]);
        assert!(matches!(
            &r.line(COMMAND_DONE)[..],
            [TranscriptEvent::ToolResult { ok: true, .. }]
        ));
        write_lines(&file, &[USAGE_2]);
        r.line(MESSAGE);
        let end = r.line(COMPLETED);
        assert!(
            matches!(&end[..], [TranscriptEvent::Usage { .. }, TranscriptEvent::Result { ok: true, turns: Some(2), text, .. }] if text == "hello.txt holds hello."),
            "{end:?}"
        );
        let outcome = r.outcome(Some(0));
        assert_eq!(outcome.end, End::Success);
        assert_eq!(outcome.session.as_deref(), Some(THREAD));
        assert_eq!(
            outcome.spend,
            [ModelSpend {
                model: Some("gpt-5-codex".into()),
                tokens: tokens(2000, 400, 100),
                usd: None
            }]
        );
    }

    #[test]
    fn a_resumed_run_counts_only_what_it_added() {
        let (dir, file) = home_with(&[SETTINGS, CALL, USAGE_1, RAN, OUTPUT, USAGE_2]);
        let mut r = CodexReader::new(dir.path().to_path_buf(), None, Some(THREAD));
        assert!(r.spent().is_empty());
        r.line(STARTED);
        write_lines(
            &file,
            &[&USAGE_2
                .replace("2400", "3600")
                .replace("\"output_tokens\":100", "\"output_tokens\":150")],
        );
        r.line(COMMAND_STARTED);
        assert_eq!(r.spent()[0].tokens, tokens(1200, 0, 50));
        r.line(COMPLETED_AGAIN);
        let outcome = r.outcome(Some(0));
        assert_eq!(outcome.end, End::Success);
        // 4800 − 2400 in (400 cached), 200 − 100 out; the model from the rollout.
        assert_eq!(outcome.spend[0].tokens, tokens(2000, 400, 100));
        assert_eq!(outcome.spend[0].model.as_deref(), Some("gpt-5-codex"));
        assert_eq!(outcome.turns, Some(1));
    }

    #[test]
    fn refused_tool_calls_fail_the_run() {
        for (answer, said) in [
            (DENIED, "Read-only file system"),
            (REJECTED, "approval policy is Never"),
        ] {
            let (dir, file) = home_with(&[]);
            let mut r = CodexReader::new(dir.path().to_path_buf(), None, None);
            r.line(STARTED);
            write_lines(&file, &[CALL, USAGE_1, answer, USAGE_2]);
            let events = r.line(MESSAGE);
            assert!(
                matches!(&events[..], [TranscriptEvent::ToolCall { .. }, TranscriptEvent::ToolResult { ok: false, text, .. }, TranscriptEvent::Message { .. }] if text.contains(said)),
                "{events:?}"
            );
            let end = r.line(COMPLETED);
            assert!(
                matches!(&end[1], TranscriptEvent::Result { ok: false, .. }),
                "{end:?}"
            );
            match r.outcome(Some(0)).end {
                End::Failure(why) => {
                    assert!(why.contains("refused") && why.contains(said), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
        // A command still running answered without its item: not refused.
        let (dir, file) = home_with(&[]);
        let mut r = CodexReader::new(dir.path().to_path_buf(), None, None);
        r.line(STARTED);
        write_lines(&file, &[CALL, RUNNING]);
        r.line(COMPLETED);
        assert_eq!(r.outcome(Some(0)).end, End::Success);
    }

    #[test]
    fn errors_fail_the_run_with_the_message_and_keep_the_spend() {
        let (dir, file) = home_with(&[]);
        let mut r = CodexReader::new(dir.path().to_path_buf(), Some("gpt-5-codex".into()), None);
        r.line(STARTED);
        write_lines(&file, &[USAGE_1]);
        assert!(
            matches!(&r.line(ERROR)[..], [TranscriptEvent::Error { text }] if text.starts_with("bad model thing"))
        );
        assert!(matches!(
            &r.line(FAILED)[..],
            [TranscriptEvent::Result { ok: false, .. }]
        ));
        let outcome = r.outcome(Some(1));
        match &outcome.end {
            End::Failure(why) => assert!(
                why.starts_with("the agent exited with 1: bad model thing"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome.spend[0].tokens, tokens(1000, 200, 50));
        // A retry notice is an error event the run recovers from.
        let mut retried = CodexReader::new(dir.path().to_path_buf(), None, None);
        retried.line(STARTED);
        assert!(matches!(
            &retried.line(RETRY)[..],
            [TranscriptEvent::Error { .. }]
        ));
        retried.line(MESSAGE);
        retried.line(COMPLETED);
        assert_eq!(retried.outcome(Some(0)).end, End::Success);
        let mut killed = CodexReader::new(dir.path().to_path_buf(), None, None);
        assert_eq!(
            killed.outcome(None).end,
            End::Failure("the agent exited with a signal".into())
        );
    }

    #[test]
    fn the_command_line_and_configuration() {
        let home = tempfile::tempdir().unwrap();
        let env = vec![
            (
                "OPENAI_BASE_URL".to_owned(),
                "http://127.0.0.1:9/v1/".to_owned(),
            ),
            ("OPENAI_API_KEY".to_owned(), "sk-test".to_owned()),
        ];
        let extra = vec!["-s".to_owned(), "read-only".to_owned()];
        let result = home.path().join("r.json");
        let launch = Launch {
            model: Some("gpt-5-codex"),
            extra_args: &extra,
            resume: Some(THREAD),
            ..test_launch(home.path(), &env, &result)
        };
        let inv = Codex.invocation(&launch, "do it".into()).unwrap();
        assert_eq!(
            inv.argv.join(" "),
            format!("codex exec --json --skip-git-repo-check -c sandbox_mode=\"workspace-write\" --disable plugins -m gpt-5-codex -s read-only resume {THREAD} -")
        );
        assert_eq!(inv.stdin.as_deref(), Some("do it"));
        assert_eq!(inv.env[0].0, "CODEX_HOME");
        assert!(inv.env[0].1.ends_with("/.codex"));
        let (path, config) = &inv.home_files[0];
        assert_eq!(path, Path::new(".codex/config.toml"));
        for line in [
            "check_for_update_on_startup = false",
            "model_provider = \"damascus\"",
            "[analytics]\nenabled = false",
            "[model_providers.damascus]",
            "base_url = \"http://127.0.0.1:9/v1\"",
            "env_key = \"OPENAI_API_KEY\"",
            "wire_api = \"responses\"",
        ] {
            assert!(config.contains(line), "{line} in {config}");
        }

        let no_key = vec![env[0].clone()];
        let launch = Launch {
            env: &no_key,
            ..launch
        };
        let why = Codex.invocation(&launch, String::new()).unwrap_err();
        assert!(why.contains("OPENAI_API_KEY"), "{why}");
        let none: Vec<(String, String)> = Vec::new();
        let launch = Launch {
            env: &none,
            resume: None,
            ..launch
        };
        let inv = Codex.invocation(&launch, String::new()).unwrap();
        assert!(!inv.home_files[0].1.contains("model_provider"));
        assert!(inv
            .argv
            .ends_with(&["read-only".to_owned(), "-".to_owned()]));
        assert_eq!(toml_string("a\"b\\c\n"), r#""a\"b\\c\u000A""#);
    }

    #[test]
    fn a_session_is_kept_while_its_rollout_is_there() {
        let home = tempfile::tempdir().unwrap();
        assert!(!Codex.session_kept(home.path(), THREAD));
        let day = home.path().join(".codex/sessions/2026/12/08");
        std::fs::create_dir_all(&day).unwrap();
        std::fs::write(
            day.join(format!("rollout-2026-12-08T01-24-31-{THREAD}.jsonl")),
            "",
        )
        .unwrap();
        assert!(Codex.session_kept(home.path(), THREAD));
        assert!(!Codex.session_kept(home.path(), "01a25340"));
        assert!(!Codex.session_kept(home.path(), ""));
    }
}
