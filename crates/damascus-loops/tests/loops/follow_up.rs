//! A follow-up measured against a fresh run, with the real Claude Code and Codex CLIs
//! against scripted model servers inside the test (the scripts of `claude_code.rs` and
//! `codex.rs`: a write of hello.txt, then a final message). The story's test command
//! wants `hello again`, so the first build's review fails and a rebuild follows. Each
//! agent runs the story twice (Claude Code three times):
//!
//! - **resumed**, as Damascus does: the rebuild continues the agent's session with only
//!   the failure;
//! - **fresh**: the agent's CLI is a wrapper that deletes the agent's session files
//!   from the item's HOME when the CLI exits (`~/.claude/projects`,
//!   `$CODEX_HOME/sessions`), so Damascus finds no session to continue and the rebuild
//!   is a fresh session with the whole spec and the failure. Claude Code refuses to
//!   overwrite a file its session has not read, so its fresh rebuild takes two more
//!   turns (the refused Write, a Read, the Write again);
//! - **resumed, with git status** (Claude Code): resumed, with
//!   `CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS=0` (Damascus sets it to 1). Claude Code's
//!   system prompt then holds a git status with the recent commits; the first build's
//!   commit changes it, and with it the prefix every later element of the resumed
//!   session's first request follows.
//!
//! The servers measure what they receive and report usage from it, so the figures the
//! CLIs see (and Claude Code's dollars, and the ledger) are the measured ones:
//!
//! - **input tokens**: a request's prompt is its elements in the order a prompt cache
//!   reads them (Messages API: each tool, each system block, each message; Responses
//!   API: the instructions, each tool, each input item), `cache_control` and input
//!   items' `id` removed; each element counts its compact JSON bytes / 4, rounded up. Other body fields (model,
//!   max_tokens, metadata, stream, …) are not counted.
//! - **cached tokens**: the tokens of the longest run of leading elements that equals
//!   the leading elements of an earlier request of the same session (the agent's
//!   session id, from the request); an element that differs ends the run, so a partly
//!   repeated element counts as uncached. "Any session" compares with every earlier
//!   request the server received, as a provider's content-keyed cache would (within
//!   its lifetime, minutes). The usage reported to the CLIs is the same-session one.
//! - **output tokens**: the scripted reply's content, compact JSON bytes / 4.
//! - **turns**: the model requests of the rebuild, from the first that carries the
//!   failure until the review passes; the script decides them, not a model.
//! - **USD**: uncached input, cached input and output at list prices (no cache writes).
//!
//! Run with `--nocapture` to see the table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use damascus_loops::LoopsConfig;
use serde_json::{json, Value};

use crate::support::{
    agent_ledger, assert_resumed_once, greeting_until_merged, serve_app, session_events, Setup,
};
use crate::{claude_code, codex};

/// The review that fails the first build (`hello`) and passes the rebuild.
const TEST_COMMAND: &str = "grep -qx 'hello again' hello.txt";
/// What a rebuild's prompt says first, fresh or resumed.
const FAILURE: &str = "previous attempt failed";
/// What only the spec holds.
const SPEC_MARK: &str = "## Acceptance criteria";

/// List prices, USD per million tokens.
#[derive(Clone, Copy)]
struct Prices {
    input: f64,
    cached: f64,
    output: f64,
}

const SONNET: Prices = Prices {
    input: 3.0,
    cached: 0.30,
    output: 15.0,
};
const GPT5_CODEX: Prices = Prices {
    input: 1.25,
    cached: 0.125,
    output: 10.0,
};

/// Which API a scripted server speaks.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    /// Anthropic Messages, as Claude Code calls it.
    Messages,
    /// OpenAI Responses, as Codex calls it.
    Responses,
}

/// One model request as the server received it, measured.
#[derive(Clone)]
struct Measured {
    body: Value,
    session: String,
    /// The prompt's elements in cache order, without `cache_control`.
    elements: Vec<Value>,
    input: i64,
    /// Tokens of the tools and the system prompt or instructions.
    fixed: i64,
    /// Tokens of its leading elements already sent in the same session.
    cached: i64,
    /// Tokens of its leading elements already sent in any earlier request.
    cached_any: i64,
    output: i64,
}

#[derive(Clone)]
struct Server {
    api: Api,
    seen: Arc<Mutex<Vec<Measured>>>,
}

/// Estimated tokens of a JSON value: its compact serialization's bytes / 4, rounded up.
fn tokens(value: &Value) -> i64 {
    (serde_json::to_string(value).unwrap().len() as i64 + 3) / 4
}

/// `value` without `cache_control` anywhere: a cache breakpoint moves from request to
/// request, and is not part of what is cached.
fn without_cache_control(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "cache_control")
                .map(|(k, v)| (k.clone(), without_cache_control(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_cache_control).collect()),
        other => other.clone(),
    }
}

/// The prompt's elements in the order a prompt cache reads them, and how many of them
/// lead: the tools and the system prompt or instructions.
fn elements(api: Api, body: &Value) -> (Vec<Value>, usize) {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut all = Vec::new();
    match api {
        Api::Messages => {
            all.extend(list(&body["tools"]));
            match &body["system"] {
                Value::Array(blocks) => all.extend(blocks.iter().cloned()),
                Value::Null => {}
                text => all.push(text.clone()),
            }
        }
        Api::Responses => {
            if !body["instructions"].is_null() {
                all.push(body["instructions"].clone());
            }
            all.extend(list(&body["tools"]));
        }
    }
    let fixed = all.len();
    match api {
        Api::Messages => all.extend(list(&body["messages"])),
        // An input item's `id` is the client's label (Codex's are per session), not
        // text the model reads.
        Api::Responses => all.extend(list(&body["input"]).into_iter().map(|mut item| {
            if let Some(item) = item.as_object_mut() {
                item.remove("id");
            }
            item
        })),
    }
    (all.iter().map(without_cache_control).collect(), fixed)
}

/// The tokens of `elements`' leading elements that equal `earlier`'s.
fn shared_prefix(elements: &[Value], earlier: &[Value]) -> i64 {
    elements
        .iter()
        .zip(earlier)
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| tokens(a))
        .sum()
}

/// The agent's session a request belongs to: Claude Code's `X-Claude-Code-Session-Id`
/// (else its `metadata.user_id`), Codex's `session_id` header (else its
/// `prompt_cache_key`).
fn session_of(api: Api, headers: &HeaderMap, body: &Value) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match api {
        Api::Messages => header("x-claude-code-session-id")
            .or_else(|| body["metadata"]["user_id"].as_str().map(str::to_owned)),
        Api::Responses => {
            header("session_id").or_else(|| body["prompt_cache_key"].as_str().map(str::to_owned))
        }
    }
    .unwrap_or_default()
}

impl Server {
    /// Measures a request with the reply it gets, and keeps it.
    fn measure(&self, headers: &HeaderMap, body: &Value, reply: &Value) -> Measured {
        let (elements, fixed) = elements(self.api, body);
        let session = session_of(self.api, headers, body);
        let mut seen = self.seen.lock().unwrap();
        let best = |same: bool| {
            seen.iter()
                .filter(|m| !same || m.session == session)
                .map(|m| shared_prefix(&elements, &m.elements))
                .max()
                .unwrap_or(0)
        };
        let measured = Measured {
            body: body.clone(),
            input: elements.iter().map(tokens).sum(),
            fixed: elements[..fixed].iter().map(tokens).sum(),
            cached: best(true),
            cached_any: best(false),
            output: tokens(reply),
            session,
            elements,
        };
        seen.push(measured.clone());
        measured
    }
}

/// Claude Code's turn: `claude_code`'s script, and what a fresh session needs besides:
/// Claude Code refuses to overwrite a file the session has not read ("File has not
/// been read yet"), so a refused Write is followed by a Read of the file, then the
/// Write again. Its usage is the measured one (Anthropic's
/// `input_tokens` are the uncached ones; nothing is reported as a cache write).
async fn messages(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let (content, stop) = claude_turn(&body);
    let m = server.measure(&headers, &body, &json!(content));
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let usage = json!({
        "input_tokens": m.input - m.cached,
        "cache_read_input_tokens": m.cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": m.output,
    });
    claude_code::respond(&body, &model, &content, stop, usage)
}

/// The last message's tool result: its tool's id, and whether it is an error.
fn last_tool_result(body: &Value) -> Option<(String, bool)> {
    let last = body["messages"].as_array()?.last()?;
    let result = last["content"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "tool_result")?;
    Some((
        result["tool_use_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        result["is_error"] == true,
    ))
}

/// The scripted Claude turn (see `messages`).
fn claude_turn(body: &Value) -> (Vec<Value>, &'static str) {
    let tool = |name: &str, id: &str, input: Value| {
        let id = format!("{id}_{}", claude_code::message_id());
        (
            vec![json!({"type": "tool_use", "id": id, "name": name, "input": input})],
            "tool_use",
        )
    };
    let file = || {
        let dir = claude_code::working_directory(body)
            .expect("Claude Code's system prompt names its working directory");
        format!("{dir}/hello.txt")
    };
    if !claude_code::last_message_text(body).contains(FAILURE) {
        match last_tool_result(body) {
            Some((id, true)) if id.starts_with("toolu_hello") => {
                return tool("Read", "toolu_read", json!({"file_path": file()}));
            }
            Some((id, false)) if id.starts_with("toolu_read") => {
                return tool(
                    "Write",
                    "toolu_hello",
                    json!({"file_path": file(), "content": "hello again\n"}),
                );
            }
            _ => {}
        }
    }
    claude_code::reply(body)
}

/// Codex's model call: `codex`'s script, its usage the measured one (OpenAI's
/// `input_tokens` include the cached ones).
async fn responses(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let item = codex::reply(codex::Script::Hello, &body);
    let m = server.measure(&headers, &body, &item);
    let usage = json!({
        "input_tokens": m.input,
        "input_tokens_details": {"cached_tokens": m.cached},
        "output_tokens": m.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": m.input + m.output,
    });
    (
        [("content-type", "text/event-stream")],
        codex::stream(&item, usage),
    )
        .into_response()
}

/// Any other request: Claude Code's reachability check, a token count; shown, so a new
/// need of a CLI is seen.
async fn other(method: Method, uri: Uri, body: Bytes) -> Response {
    if uri.path() == "/v1/messages/count_tokens" {
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        let (elements, _) = elements(Api::Messages, &body);
        let input: i64 = elements.iter().map(tokens).sum();
        return Json(json!({"input_tokens": input})).into_response();
    }
    if method != Method::HEAD {
        eprintln!("scripted model: unexpected request {method} {uri}");
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn serve(api: Api) -> (SocketAddr, Arc<Mutex<Vec<Measured>>>) {
    let seen: Arc<Mutex<Vec<Measured>>> = Arc::default();
    let app = match api {
        Api::Messages => Router::new().route("/v1/messages", post(messages)),
        Api::Responses => Router::new().route("/v1/responses", post(responses)),
    }
    .fallback(other)
    .with_state(Server {
        api,
        seen: seen.clone(),
    });
    (serve_app(app).await, seen)
}

/// How the rebuild gets its session.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    /// As Damascus does: the rebuild continues the session.
    Resumed,
    /// The session's files are gone when the rebuild starts.
    Fresh,
    /// Claude Code only: resumed, with `CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS=0`, which
    /// puts the git status (its recent commits) back into the system prompt.
    ResumedWithGitStatus,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Resumed => "resumed",
            Variant::Fresh => "fresh",
            Variant::ResumedWithGitStatus => "resumed, with git status",
        }
    }
}

/// A script that runs `cli` and then deletes `sessions` (a path under the agent's
/// HOME, in shell syntax): the next run finds no session to continue.
fn forgetful(dir: &Path, cli: &Path, sessions: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let cli = cli.to_string_lossy();
    assert!(!cli.contains('\''), "{cli}");
    let path = dir.join(cli.rsplit('/').next().unwrap());
    std::fs::write(
        &path,
        format!("#!/bin/sh\n'{cli}' \"$@\"\nstatus=$?\nrm -rf {sessions}\nexit $status\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The item's agent rows in the ledger: tokens in (with cached), cached, out, USD.
async fn ledger(setup: &Setup, item: i64) -> Vec<(i64, i64, i64, f64)> {
    agent_ledger(setup, item)
        .await
        .into_iter()
        .map(|(_, tokens_in, tokens_out, tokens_cached, _, usd)| {
            (tokens_in, tokens_cached, tokens_out, usd)
        })
        .collect()
}

/// The sums over some requests.
#[derive(Default, Debug)]
struct Sums {
    requests: usize,
    input: i64,
    fixed: i64,
    cached: i64,
    cached_any: i64,
    output: i64,
}

impl Sums {
    fn of(requests: &[Measured]) -> Sums {
        let mut sums = Sums::default();
        for m in requests {
            sums.requests += 1;
            sums.input += m.input;
            sums.fixed += m.fixed;
            sums.cached += m.cached;
            sums.cached_any += m.cached_any;
            sums.output += m.output;
        }
        sums
    }

    /// USD at `prices` with `cached` of the input tokens cached.
    fn usd(&self, prices: Prices, cached: i64) -> f64 {
        ((self.input - cached) as f64 * prices.input
            + cached as f64 * prices.cached
            + self.output as f64 * prices.output)
            / 1e6
    }

    fn row(&self, name: &str, prices: Prices) -> String {
        format!(
            "| {name:<36} | {:>8} | {:>9} | {:>10} | {:>10} | {:>12} | {:>10} | {:>9.5} | {:>10} | {:>9.5} |",
            self.requests,
            self.input,
            self.fixed,
            self.cached,
            self.input - self.cached,
            self.output,
            self.usd(prices, self.cached),
            self.cached_any,
            self.usd(prices, self.cached_any),
        )
    }
}

/// One run of the story, measured.
struct Run {
    variant: Variant,
    first: Sums,
    rebuild: Sums,
    /// The first request of the rebuild.
    follow_up: Measured,
    sessions: Vec<(bool, String)>,
    ledger: Vec<(i64, i64, i64, f64)>,
    /// Each request: session, input, cached, cached in any session, output.
    requests: Vec<String>,
}

/// Runs the story on a project `project` makes, with the agent's CLI at `cli`, and
/// measures the rebuild: the requests from the first that carries the failure.
async fn measured_run<F, Fut>(
    variant: Variant,
    api: Api,
    cli: PathBuf,
    project: F,
    last_user_text: fn(&Value) -> String,
) -> Run
where
    F: FnOnce(PathBuf, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = (Setup, LoopsConfig)>,
{
    let (addr, seen) = serve(api).await;
    let (setup, config) = project(cli, addr).await;
    eprintln!("{variant:?} run");
    let item = greeting_until_merged(&setup, config).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let start = seen
        .iter()
        .position(|m| last_user_text(&m.body).contains(FAILURE))
        .expect("a request carried the failure");
    Run {
        variant,
        first: Sums::of(&seen[..start]),
        rebuild: Sums::of(&seen[start..]),
        follow_up: seen[start].clone(),
        sessions: session_events(&setup, item).await,
        ledger: ledger(&setup, item).await,
        requests: seen
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "{}{i}: session {} in {} cached {} (any {}) out {}",
                    if i == start { "rebuild from " } else { "" },
                    m.session,
                    m.input,
                    m.cached,
                    m.cached_any,
                    m.output
                )
            })
            .collect(),
    }
}

/// The table of both runs, for one agent.
fn table(agent: &str, prices: Prices, runs: &[Run]) -> String {
    let mut lines = vec![
        format!(
            "{agent}: a rebuild after a failed review, resumed vs fresh (USD at {}/{}/{} per Mtok in/cached/out)",
            prices.input, prices.cached, prices.output
        ),
        "| run                                  | requests | input tok | tools+sys  | cached tok | uncached tok | output tok | USD       | cached any | USD any   |".into(),
        "|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for run in runs {
        let name = run.variant.name();
        lines.push(run.first.row(&format!("{name}: first build"), prices));
        lines.push(run.rebuild.row(&format!("{name}: rebuild"), prices));
    }
    for run in runs {
        lines.push(format!(
            "{}: ledger (tokens_in, cached, out, usd) per run: {:?}; sessions (resumed, id): {:?}",
            run.variant.name(),
            run.ledger,
            run.sessions
        ));
        lines.extend(run.requests.iter().map(|r| format!("  {r}")));
    }
    lines.join("\n")
}

/// What must hold of both runs: the resumed rebuild carries the earlier turns and not
/// the spec a second time; the fresh one carries the spec and not the earlier turns.
fn check(runs: &[Run], api: Api, earlier_call: &str, last_user_text: fn(&Value) -> String) {
    for run in runs {
        let history = match api {
            Api::Messages => run.follow_up.body["messages"].to_string(),
            Api::Responses => run.follow_up.body["input"].to_string(),
        };
        let specs = history.matches(SPEC_MARK).count();
        let prompt = last_user_text(&run.follow_up.body);
        assert!(prompt.contains(FAILURE), "{prompt}");
        match run.variant {
            Variant::Resumed | Variant::ResumedWithGitStatus => {
                assert!(
                    history.contains(earlier_call),
                    "the earlier turns are in the follow-up: {history}"
                );
                assert!(
                    prompt.contains("You worked on this change before")
                        && !prompt.contains(SPEC_MARK),
                    "only what is new: {prompt}"
                );
                assert_eq!(specs, 1, "the spec once, from the first build: {history}");
                assert!(run.follow_up.cached > 0);
                assert_resumed_once(&run.sessions, "session");
            }
            Variant::Fresh => {
                assert!(
                    !history.contains(earlier_call),
                    "a fresh session: {history}"
                );
                assert!(prompt.contains(SPEC_MARK), "the whole spec: {prompt}");
                assert_eq!(specs, 1, "the spec, with the failure: {history}");
                assert_eq!(run.sessions.len(), 2, "{:?}", run.sessions);
                assert!(
                    !run.sessions[0].0 && !run.sessions[1].0,
                    "{:?}",
                    run.sessions
                );
                assert_ne!(run.sessions[0].1, run.sessions[1].1);
            }
        }
    }
}

#[tokio::test]
async fn claude_code_follow_up_against_a_fresh_run() {
    let Some(claude) = claude_code::installed_claude() else {
        return;
    };
    let wrappers = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for variant in [
        Variant::Resumed,
        Variant::Fresh,
        Variant::ResumedWithGitStatus,
    ] {
        let cli = match variant {
            Variant::Fresh => forgetful(wrappers.path(), &claude, "\"${HOME:?}/.claude/projects\""),
            _ => claude.clone(),
        };
        let project = |cli: PathBuf, addr| async move {
            let (setup, mut config) = claude_code::claude_project(&cli, addr, |p| {
                p.test_command = Some(TEST_COMMAND.into());
            })
            .await;
            if variant == Variant::ResumedWithGitStatus {
                config
                    .agent_env
                    .push(("CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS".into(), "0".into()));
            }
            (setup, config)
        };
        runs.push(
            measured_run(
                variant,
                Api::Messages,
                cli,
                project,
                claude_code::last_message_text,
            )
            .await,
        );
    }
    eprintln!(
        "{}",
        table(
            &format!("Claude Code ({})", claude_code::MODEL),
            SONNET,
            &runs
        )
    );
    check(
        &runs,
        Api::Messages,
        "toolu_hello",
        claude_code::last_message_text,
    );
}

#[tokio::test]
async fn codex_follow_up_against_a_fresh_run() {
    let Some(codex) = codex::installed_codex() else {
        return;
    };
    // Codex's sandbox refuses commands when its home is under /tmp; so may a wrapper's.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    let wrappers = tempfile::tempdir_in(base).unwrap();
    let mut runs = Vec::new();
    for variant in [Variant::Resumed, Variant::Fresh] {
        let cli = match variant {
            Variant::Resumed => codex.clone(),
            Variant::Fresh => forgetful(wrappers.path(), &codex, "\"${CODEX_HOME:?}/sessions\""),
            Variant::ResumedWithGitStatus => unreachable!(),
        };
        let project = |cli: PathBuf, addr| async move {
            codex::codex_project(&cli, addr, |p| {
                p.test_command = Some(TEST_COMMAND.into());
            })
            .await
        };
        runs.push(measured_run(variant, Api::Responses, cli, project, codex::last_user_text).await);
    }
    eprintln!(
        "{}",
        table(&format!("Codex ({})", codex::MODEL), GPT5_CODEX, &runs)
    );
    check(&runs, Api::Responses, "call_hello_", codex::last_user_text);
}
