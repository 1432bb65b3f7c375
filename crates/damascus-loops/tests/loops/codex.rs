//! The real Codex CLI (`codex exec`) as the project's agent, against a scripted
//! OpenAI Responses API inside the test. The version CI installs is in
//! `tests/codex.version`; without `codex` these tests fail, unless
//! `DAMASCUS_SKIP_CODEX` is set.
//!
//! What Codex 0.169.0 does here: one streaming `POST /v1/responses` per model call
//! (`{OPENAI_BASE_URL}/responses`, `Authorization: Bearer $OPENAI_API_KEY`), each
//! sending the whole thread as `input` (developer instructions, an
//! `environment_context` user message, the prompt, then the calls and their outputs)
//! and the tools `exec_command`, `write_stdin`, `request_user_input`, `view_image`,
//! `multi_agent_v1`, the goal tools and `web_search` (no `apply_patch` for a model
//! whose metadata it lacks: it warns "Model metadata for `gpt-5-codex` not found"
//! as an `error` item and goes on). It runs an `exec_command` call as `/bin/bash -lc
//! CMD` and sends its output back as a `function_call_output`; the first response
//! without a call ends the run. It needs nothing else from the network with
//! `--disable plugins` and analytics off (checked with strace: only the scripted
//! server is connected to).
//!
//! The data directory is under cargo's target tmp dir, not /tmp: Codex's own sandbox
//! (workspace-write) refuses every command when its home is under /tmp.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use damascus_core::transcript::TranscriptEvent as E;
use damascus_core::SpecMode;
use serde_json::{json, Value};

use crate::support::{
    agent_ledger, assert_conversation, assert_resumed_once, greeting_until_merged, header,
    installed_cli, one_agent_row, path_with, resumed_request, serve_app, session_events,
    transcript, unexpected, Conversation, Setup, Target, GREETING,
};

/// A model in data/prices.toml, so Damascus prices the tokens Codex reports.
pub(crate) const MODEL: &str = "gpt-5-codex";
/// Its price per token: input, cached input, output.
const PRICE: (f64, f64, f64) = (1.25e-6, 0.125e-6, 10e-6);
const INPUT_TOKENS: i64 = 1000;
const CACHED_TOKENS: i64 = 200;
const OUTPUT_TOKENS: i64 = 50;

pub(crate) fn installed_codex() -> Option<std::path::PathBuf> {
    installed_cli(
        "codex",
        "codex",
        "@openai/codex",
        include_str!("../../../../tests/codex.version"),
    )
}

/// How the scripted model plays.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Script {
    /// A shell call writing hello.txt, then, once its output is back, a final message.
    Hello,
    /// Shell calls, one after another, never done.
    Forever,
    /// The shell call, then an HTTP 400 for the next request.
    FailsSecond,
}

#[derive(Default)]
struct Seen {
    /// The body of every `POST /v1/responses`.
    requests: Vec<Value>,
    /// Their `Authorization` headers.
    keys: Vec<String>,
    /// Every other request.
    others: Vec<String>,
}

#[derive(Clone)]
struct Model {
    script: Script,
    /// Input tokens reported per response (of which `CACHED_TOKENS` cached).
    input_tokens: i64,
    seen: Arc<Mutex<Seen>>,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The text of the last user message of a request.
pub(crate) fn last_user_text(body: &Value) -> String {
    body["input"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|item| item["role"] == "user")
        .and_then(|item| item["content"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the request's last input is a tool's output.
fn tool_output_back(body: &Value) -> bool {
    body["input"]
        .as_array()
        .and_then(|input| input.last())
        .is_some_and(|item| item["type"] == "function_call_output")
}

/// The next output item: a shell call writing hello.txt (`hello again` when the prompt
/// says the previous attempt failed), or a final message.
pub(crate) fn reply(script: Script, body: &Value) -> Value {
    if tool_output_back(body) && script != Script::Forever {
        return json!({
            "type": "message", "id": format!("msg_{}", next_id()), "role": "assistant",
            "content": [{"type": "output_text", "text": "hello.txt now holds hello."}],
        });
    }
    let text = if last_user_text(body).contains("previous attempt failed") {
        "hello again"
    } else {
        "hello"
    };
    let n = next_id();
    json!({
        "type": "function_call", "id": format!("fc_{n}"), "call_id": format!("call_hello_{n}"),
        "name": "exec_command",
        "arguments": json!({"cmd": format!("printf '{text}\\n' > hello.txt")}).to_string(),
    })
}

/// The scripted usage of one response of `input_tokens`.
fn usage(input_tokens: i64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": CACHED_TOKENS.min(input_tokens)},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 10},
        "total_tokens": input_tokens + OUTPUT_TOKENS,
    })
}

/// The output item `item` as the Responses API streams it, having used `usage`.
pub(crate) fn stream(item: &Value, usage: Value) -> String {
    let id = format!("resp_{}", next_id());
    let mut events = vec![json!({"type": "response.created", "response": {"id": id}})];
    if item["type"] == "message" {
        let mut empty = item.clone();
        empty["content"] = json!([]);
        events
            .push(json!({"type": "response.output_item.added", "output_index": 0, "item": empty}));
        events.push(
            json!({"type": "response.output_text.delta", "item_id": item["id"],
            "output_index": 0, "content_index": 0, "delta": item["content"][0]["text"]}),
        );
    } else {
        events.push(json!({"type": "response.output_item.added", "output_index": 0, "item": item}));
    }
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    events.push(json!({"type": "response.completed", "response": {"id": id, "usage": usage}}));
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

async fn responses(
    State(model): State<Model>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let count = {
        let mut seen = model.seen.lock().unwrap();
        seen.requests.push(body.clone());
        seen.keys.push(header(&headers, "authorization"));
        seen.requests.len()
    };
    if model.script == Script::FailsSecond && count >= 2 {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "the scripted model refuses this request",
                "type": "invalid_request_error", "code": null}}),
            ),
        )
            .into_response();
    }
    let item = reply(model.script, &body);
    (
        [("content-type", "text/event-stream")],
        stream(&item, usage(model.input_tokens)),
    )
        .into_response()
}

async fn other(State(model): State<Model>, method: Method, uri: Uri, body: Bytes) -> Response {
    let shown = unexpected(&method, &uri, &body);
    model.seen.lock().unwrap().others.push(shown);
    StatusCode::NOT_FOUND.into_response()
}

async fn serve(script: Script, input_tokens: i64) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/responses", post(responses))
        .fallback(other)
        .with_state(Model {
            script,
            input_tokens,
            seen: seen.clone(),
        });
    (serve_app(app).await, seen)
}

/// A passthrough project on Codex with `MODEL`, and the agent's environment: `codex`
/// first on PATH, the scripted server as `OPENAI_BASE_URL`, a test key.
pub(crate) async fn codex_project(
    codex: &std::path::Path,
    addr: SocketAddr,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (Setup, damascus_loops::LoopsConfig) {
    // Under /tmp, like every test's: Codex gets a TMPDIR of its own in the item's HOME.
    let setup = Setup::new().await;
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent_command = None;
            p.agent = damascus_core::AgentKind::Codex;
            p.agent_model = Some(MODEL.into());
            p.agent_timeout_secs = 60;
            edit(p);
        })
        .await;
    let mut config = setup.loops_config(None);
    config.agent_env = [
        ("PATH", path_with(&setup, "codex", codex)),
        ("OPENAI_BASE_URL", format!("http://{addr}/v1")),
        ("OPENAI_API_KEY", "sk-codex-test".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (setup, config)
}

/// What `responses` model responses of the scripted model cost: their tokens at
/// `MODEL`'s price.
fn priced(responses: i64, input_tokens: i64) -> f64 {
    let cached = CACHED_TOKENS.min(input_tokens);
    responses as f64
        * ((input_tokens - cached) as f64 * PRICE.0
            + cached as f64 * PRICE.1
            + OUTPUT_TOKENS as f64 * PRICE.2)
}

async fn last_failure(setup: &Setup, item: i64) -> String {
    damascus_db::items::last_failure(&setup.db.pool, item)
        .await
        .unwrap()
        .map(|(reason, _)| reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn the_real_codex_builds_a_story_that_merges() {
    let Some(codex) = installed_codex() else {
        return;
    };
    let (addr, seen) = serve(Script::Hello, INPUT_TOKENS).await;
    let (setup, config) = codex_project(&codex, addr, |p| p.max_attempts_per_phase = 1).await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        setup.phase(item).await,
        "merged",
        "{:?}; last failure: {}",
        setup.steps(item).await,
        last_failure(&setup, item).await
    );
    // Two model calls: the shell call, then the answer to its output.
    assert_eq!(seen.requests.len(), 2, "others: {:?}", seen.others);
    assert!(seen.others.is_empty(), "{:?}", seen.others);
    assert!(
        seen.keys.iter().all(|k| k == "Bearer sk-codex-test"),
        "{:?}",
        seen.keys
    );
    assert!(seen.requests.iter().all(|r| r["model"] == MODEL));
    let tools = seen.requests[0]["tools"].to_string();
    assert!(tools.contains("exec_command"), "{tools}");
    let second = seen.requests[1]["input"].to_string();
    assert!(
        second.contains("function_call_output") && second.contains("call_hello_"),
        "{second}"
    );
    assert_eq!(setup.main_file("hello.txt").await.trim_end(), "hello");

    // Codex reports tokens, no dollars: Damascus prices them at MODEL's price.
    let (model, tokens_in, tokens_out, tokens_cached, price, usd) =
        one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out, tokens_cached),
        (
            MODEL,
            2 * INPUT_TOKENS,
            2 * OUTPUT_TOKENS,
            2 * CACHED_TOKENS
        )
    );
    let price = price.expect("a priced row names its price");
    assert!(
        price.starts_with("gpt-5-codex at 1.25/0.125/10 USD per Mtok"),
        "{price}"
    );
    let expected = priced(2, INPUT_TOKENS);
    assert!((usd - expected).abs() < 1e-9, "{usd} vs {expected}");

    assert_conversation(
        &transcript(&setup, item, "build-1"),
        &Conversation {
            model: Some(MODEL),
            session: true,
            tool: "shell",
            target: Target::Contains("hello.txt"),
            turns: 2,
        },
    );
}

#[tokio::test]
async fn the_real_codex_is_stopped_at_its_reservation() {
    let Some(codex) = installed_codex() else {
        return;
    };
    // One response costs about 0.25 USD, more than the item's whole budget; the model
    // never finishes on its own.
    const BIG: i64 = 200_000;
    const BUDGET: f64 = 0.10;
    let (addr, seen) = serve(Script::Forever, BIG).await;
    let (setup, config) = codex_project(&codex, addr, |p| {
        p.cost_budget_usd = Some(BUDGET);
        p.max_attempts_per_phase = 3;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let started = std::time::Instant::now();
    setup.cycle_with(config).await;
    let took = started.elapsed();

    // Stopped when the first response's usage showed, long before its time limit.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        (1..=3).contains(&seen.requests.len()),
        "{} requests",
        seen.requests.len()
    );
    assert!(took < std::time::Duration::from_secs(40), "{took:?}");
    let reason = last_failure(&setup, item).await;
    assert!(
        reason.contains(
            "the agent was stopped when its usage reached the 0.1000 USD reserved for it"
        ),
        "{reason}"
    );

    // What it used is recorded, priced, although it was stopped.
    let (model, tokens_in, tokens_out, tokens_cached, _, usd) = one_agent_row(&setup, item).await;
    let responses = tokens_in / BIG;
    assert!(
        responses >= 1 && tokens_in == responses * BIG,
        "{tokens_in} tokens in"
    );
    assert_eq!(
        (model.as_str(), tokens_out, tokens_cached),
        (MODEL, responses * OUTPUT_TOKENS, responses * CACHED_TOKENS)
    );
    let expected = priced(responses, BIG);
    assert!((usd - expected).abs() < 1e-9, "{usd} vs {expected}");
    eprintln!(
        "Codex was stopped after {responses} response(s): {usd} USD under a {BUDGET} USD budget"
    );

    // No further run starts: the budget is spent, a person decides.
    let question = setup.blocked_question(item).await;
    assert!(question.contains("of its 0.1000 USD budget"), "{question}");
}

/// A rebuild after failed tests continues Codex's thread: the model is sent the
/// earlier turns, and the failure as the last user message, without the spec again;
/// the second run's ledger row holds only its own tokens.
#[tokio::test]
async fn the_real_codex_continues_its_thread_after_failed_tests() {
    let Some(codex) = installed_codex() else {
        return;
    };
    let (addr, seen) = serve(Script::Hello, INPUT_TOKENS).await;
    let (setup, config) = codex_project(&codex, addr, |p| {
        p.test_command = Some("grep -qx 'hello again' hello.txt".into());
    })
    .await;
    let item = greeting_until_merged(&setup, config).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let follow_up = resumed_request(&seen.requests, last_user_text);
    let history = follow_up["input"].to_string();
    assert!(
        history.contains("call_hello_") && history.contains("Acceptance criteria"),
        "the earlier turns are in the follow-up: {history}"
    );
    // Two runs of two model calls each; the second carried the first.
    assert_eq!(seen.requests.len(), 4, "{} requests", seen.requests.len());
    assert_resumed_once(&session_events(&setup, item).await, "thread");
    // Codex counts the thread's usage cumulatively; each row holds its run's own.
    let rows = agent_ledger(&setup, item).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (model, tokens_in, tokens_out, tokens_cached, _, usd) in &rows {
        assert_eq!(
            (model.as_str(), *tokens_in, *tokens_out, *tokens_cached),
            (
                MODEL,
                2 * INPUT_TOKENS,
                2 * OUTPUT_TOKENS,
                2 * CACHED_TOKENS
            )
        );
        assert!((usd - priced(2, INPUT_TOKENS)).abs() < 1e-9, "{usd}");
    }
}

/// Under `-s read-only` (the project's agent args) Codex's sandbox refuses the write;
/// Codex tells the model, says nothing of it on stdout and exits 0. The run is a
/// failure that says which call was refused and why.
#[tokio::test]
async fn the_real_codex_whose_tool_calls_were_refused_fails() {
    let Some(codex) = installed_codex() else {
        return;
    };
    let (addr, seen) = serve(Script::Hello, INPUT_TOKENS).await;
    let (setup, config) = codex_project(&codex, addr, |p| {
        p.max_attempts_per_phase = 1;
        p.agent_args = vec!["-s".into(), "read-only".into()];
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("Codex refused the agent's tool call exec_command")
            && question.contains("hello.txt: Read-only file system"),
        "{question}"
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.requests.len(), 2);
    let answer = seen.requests[1]["input"].to_string();
    assert!(answer.contains("Read-only file system"), "{answer}");
    let events = transcript(&setup, item, "build-1");
    assert!(
        events.iter().any(
            |e| matches!(e, E::ToolResult { ok: false, text, .. } if text.starts_with("refused:"))
        ),
        "{events:#?}"
    );
    assert!(
        matches!(events.last(), Some(E::Result { ok: false, subtype, .. }) if subtype == "tools_refused"),
        "{events:#?}"
    );
    // What it spent still counts.
    assert_eq!(one_agent_row(&setup, item).await.1, 2 * INPUT_TOKENS);
}

/// The model server answers Codex's second request with HTTP 400: Codex exits 1 with
/// the API's message; the run fails with it, and the first response's tokens are
/// recorded.
#[tokio::test]
async fn the_real_codex_that_exits_non_zero_fails_with_its_error() {
    let Some(codex) = installed_codex() else {
        return;
    };
    let (addr, seen) = serve(Script::FailsSecond, INPUT_TOKENS).await;
    let (setup, config) = codex_project(&codex, addr, |p| p.max_attempts_per_phase = 1).await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("the agent exited with 1: the scripted model refuses this request"),
        "{question}"
    );
    assert_eq!(seen.lock().unwrap().requests.len(), 2);
    let (model, tokens_in, tokens_out, tokens_cached, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out, tokens_cached),
        (MODEL, INPUT_TOKENS, OUTPUT_TOKENS, CACHED_TOKENS)
    );
    assert!((usd - priced(1, INPUT_TOKENS)).abs() < 1e-9, "{usd}");
    let events = transcript(&setup, item, "build-1");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, E::Result { ok: false, subtype, .. } if subtype == "turn_failed")),
        "{events:#?}"
    );
}
