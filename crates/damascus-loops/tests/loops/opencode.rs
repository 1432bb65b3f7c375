//! The real OpenCode CLI (`opencode run --format json`) as a project's agent, against
//! a scripted OpenAI Chat Completions server inside the test, reached through the
//! worker's `OPENAI_BASE_URL`. The version CI installs is in `tests/opencode.version`;
//! without `opencode` these tests fail, unless `DAMASCUS_SKIP_OPENCODE` is set.
//!
//! What OpenCode 1.18.33 does here: one streaming `POST /v1/chat/completions` per step
//! (`stream_options.include_usage`, the key as a Bearer token, the model as configured
//! in the `damascus` provider), nothing else (the title call is off in Damascus's
//! configuration; models.dev, updates and the plugin install are kept off). For a
//! `gpt-*` model it offers `apply_patch` instead of `write`/`edit`, and `bash`; the
//! scripted model writes hello.txt with `bash`. It prices each step with the cost in
//! its configuration (Damascus's price table) and reports it on `step_finish`, with
//! `tokens.input` not counting the cached tokens. A call that needs asking is
//! auto-rejected (exit 0, the tool's state `error`); an API error that is not
//! retryable (400) is an `error` event and exit 1 (429 and 5xx it retries for about a
//! minute first).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use damascus_core::SpecMode;
use serde_json::{json, Value};

use crate::support::{
    agent_ledger, assert_conversation, assert_resumed_once, greeting_until_merged, header,
    installed_cli, one_agent_row, path_with, resumed_request, serve_app, session_events,
    transcript, unexpected, Conversation, Setup, Target, GREETING,
};

/// A model in data/prices.toml: 1.25 / 0.125 / 10 USD per million tokens
/// (input / cached input / output).
const MODEL: &str = "gpt-5";
const PRICE_IN: f64 = 1.25 / 1e6;
const PRICE_CACHED: f64 = 0.125 / 1e6;
const PRICE_OUT: f64 = 10.0 / 1e6;
const OUTPUT_TOKENS: i64 = 50;
const CACHED_TOKENS: i64 = 200;
const KEY: &str = "sk-opencode-test";

fn installed_opencode() -> Option<std::path::PathBuf> {
    installed_cli(
        "opencode",
        "opencode",
        "opencode-ai",
        include_str!("../../../../tests/opencode.version"),
    )
}

/// What the scripted model saw.
#[derive(Default)]
struct Seen {
    /// The body of every `POST /v1/chat/completions`.
    requests: Vec<Value>,
    /// `authorization` of each.
    keys: Vec<String>,
    /// Every other request: method and path.
    others: Vec<String>,
}

#[derive(Clone)]
struct Model {
    /// Prompt tokens reported per call (`CACHED_TOKENS` of them cached).
    prompt_tokens: i64,
    /// The call (counting from 1) from which the server answers HTTP 400.
    fail_from: Option<usize>,
    seen: Arc<Mutex<Seen>>,
}

/// The text of a message (a string, or text parts).
fn text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn last_message(body: &Value) -> Value {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default()
}

/// What the scripted model answers: a title without tools; after a tool result, the
/// final text; else a `bash` call writing hello.txt (`hello again` when the prompt
/// says the previous attempt failed).
enum Reply {
    Text(&'static str),
    Bash(&'static str),
}

fn reply(body: &Value) -> Reply {
    if body["tools"].as_array().is_none_or(|t| t.is_empty()) {
        return Reply::Text("Greeting");
    }
    let last = last_message(body);
    if last["role"] == "tool" {
        return Reply::Text("hello.txt now holds hello.");
    }
    if text(&last).contains("previous attempt failed") {
        Reply::Bash("printf 'hello again\\n' > hello.txt")
    } else {
        Reply::Bash("printf 'hello\\n' > hello.txt")
    }
}

fn call_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "call_hello_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The reply as Chat Completions streams it: chunks, a usage chunk, `[DONE]`.
fn stream(model: &str, reply: Reply, prompt_tokens: i64) -> String {
    let chunk = |choices: Value| {
        json!({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
               "model": model, "choices": choices})
    };
    let (delta, finish) = match reply {
        Reply::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Reply::Bash(command) => (
            json!({"role": "assistant", "tool_calls": [{
                "index": 0, "id": call_id(), "type": "function",
                "function": {"name": "bash", "arguments": json!({
                    "command": command, "description": "Write hello.txt"}).to_string()},
            }]}),
            "tool_calls",
        ),
    };
    let mut usage = chunk(json!([]));
    usage["usage"] = json!({
        "prompt_tokens": prompt_tokens, "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": prompt_tokens + OUTPUT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    });
    [
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": null}])),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": finish}])),
        usage,
    ]
    .iter()
    .map(|c| format!("data: {c}\n\n"))
    .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
    .collect()
}

async fn completions(
    State(model): State<Model>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let call = {
        let mut seen = model.seen.lock().unwrap();
        seen.requests.push(body.clone());
        seen.keys.push(header(&headers, "authorization"));
        seen.requests.len()
    };
    if model.fail_from.is_some_and(|from| call >= from) {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "scripted bad request: the model is unavailable",
                                  "type": "invalid_request_error"}}),
            ),
        )
            .into_response();
    }
    let name = body["model"].as_str().unwrap_or(MODEL).to_owned();
    (
        [("content-type", "text/event-stream")],
        stream(&name, reply(&body), model.prompt_tokens),
    )
        .into_response()
}

async fn other(State(model): State<Model>, method: Method, uri: Uri, body: Bytes) -> Response {
    let shown = unexpected(&method, &uri, &body);
    model.seen.lock().unwrap().others.push(shown);
    StatusCode::NOT_FOUND.into_response()
}

async fn serve(prompt_tokens: i64, fail_from: Option<usize>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .fallback(other)
        .with_state(Model {
            prompt_tokens,
            fail_from,
            seen: seen.clone(),
        });
    (serve_app(app).await, seen)
}

/// A passthrough project on OpenCode with model `gpt-5`, and the agent's environment:
/// `opencode` first on PATH, the scripted server as `OPENAI_BASE_URL`, and `extra`.
async fn opencode_project(
    opencode: &std::path::Path,
    addr: SocketAddr,
    extra: &[(&str, &str)],
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (Setup, damascus_loops::LoopsConfig) {
    let setup = Setup::new().await;
    let path = path_with(&setup, "opencode", opencode);
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent_command = None;
            p.agent = damascus_core::AgentKind::Opencode;
            p.agent_model = Some(MODEL.into());
            p.agent_timeout_secs = 120;
            edit(p);
        })
        .await;
    let mut config = setup.loops_config(None);
    let url = format!("http://{addr}/v1");
    config.agent_env = [
        ("PATH", path.as_str()),
        ("OPENAI_BASE_URL", url.as_str()),
        ("OPENAI_API_KEY", KEY),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (setup, config)
}

/// What `calls` calls of `prompt_tokens` each cost at gpt-5's price.
fn priced(calls: i64, prompt_tokens: i64) -> f64 {
    calls as f64
        * ((prompt_tokens - CACHED_TOKENS) as f64 * PRICE_IN
            + CACHED_TOKENS as f64 * PRICE_CACHED
            + OUTPUT_TOKENS as f64 * PRICE_OUT)
}

#[tokio::test]
async fn the_real_opencode_builds_a_story_that_merges() {
    let Some(opencode) = installed_opencode() else {
        return;
    };
    const PROMPT_TOKENS: i64 = 1000;
    let (addr, seen) = serve(PROMPT_TOKENS, None).await;
    let (setup, config) = opencode_project(&opencode, addr, &[], |p| {
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        setup.phase(item).await,
        "merged",
        "{} requests; others: {:?}; steps {:?}",
        seen.requests.len(),
        seen.others,
        setup.steps(item).await
    );
    // Two steps: the bash call, then the answer to its result; nothing else asked.
    assert_eq!(seen.requests.len(), 2, "others: {:?}", seen.others);
    assert!(seen.others.is_empty(), "{:?}", seen.others);
    assert!(seen.keys.iter().all(|k| k == &format!("Bearer {KEY}")));
    assert!(seen.requests.iter().all(|r| r["model"] == MODEL
        && r["stream"] == true
        && r["stream_options"]["include_usage"] == true));
    assert_eq!(last_message(&seen.requests[1])["role"], "tool");
    assert_eq!(setup.main_file("hello.txt").await.trim_end(), "hello");

    // OpenCode's dollars, at the price Damascus configured from data/prices.toml.
    let (model, tokens_in, tokens_out, tokens_cached, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out, tokens_cached),
        (
            MODEL,
            2 * PROMPT_TOKENS,
            2 * OUTPUT_TOKENS,
            2 * CACHED_TOKENS
        )
    );
    let want = priced(2, PROMPT_TOKENS);
    eprintln!("OpenCode reported {usd} USD for 2 steps (priced {want})");
    assert!((usd - want).abs() < 1e-9, "{usd} vs {want}");

    assert_conversation(
        &transcript(&setup, item, "build-1"),
        &Conversation {
            model: None,
            session: true,
            tool: "bash",
            target: Target::Contains("hello.txt"),
            turns: 2,
        },
    );
}

#[tokio::test]
async fn the_real_opencode_is_stopped_at_its_reservation() {
    let Some(opencode) = installed_opencode() else {
        return;
    };
    // One step costs about 0.25 USD, more than the item's budget.
    const PROMPT_TOKENS: i64 = 200_000;
    const BUDGET: f64 = 0.10;
    let (addr, seen) = serve(PROMPT_TOKENS, None).await;
    let (setup, config) = opencode_project(&opencode, addr, &[], |p| {
        p.cost_budget_usd = Some(BUDGET);
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Stopped on its first step's usage; the next call may have begun by then.
    assert!(
        (1..=2).contains(&seen.requests.len()),
        "{} requests",
        seen.requests.len()
    );
    let (model, tokens_in, tokens_out, tokens_cached, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out, tokens_cached),
        (MODEL, PROMPT_TOKENS, OUTPUT_TOKENS, CACHED_TOKENS)
    );
    let step = priced(1, PROMPT_TOKENS);
    assert!((usd - step).abs() < 1e-9, "{usd} vs {step}");
    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("stopped when its usage reached the 0.1000 USD reserved for it"),
        "{question}"
    );
}

/// A rebuild after a failed test continues OpenCode's session: the model is sent the
/// earlier conversation and the failure as the last user message.
#[tokio::test]
async fn the_real_opencode_continues_its_session_after_a_failed_test() {
    let Some(opencode) = installed_opencode() else {
        return;
    };
    let (addr, seen) = serve(1000, None).await;
    let (setup, config) = opencode_project(&opencode, addr, &[], |p| {
        p.test_command = Some("grep -qx 'hello again' hello.txt".into());
    })
    .await;
    let item = greeting_until_merged(&setup, config).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let follow_up = resumed_request(&seen.requests, |r| text(&last_message(r)));
    assert_eq!(last_message(follow_up)["role"], "user");
    let history = follow_up["messages"].to_string();
    assert!(
        history.contains("call_hello_") && history.contains("hello.txt now holds hello."),
        "the earlier turns are in the follow-up: {history}"
    );
    assert_eq!(seen.requests.len(), 4, "two runs of two steps");
    let sessions = session_events(&setup, item).await;
    assert_resumed_once(&sessions, "session");
    assert!(sessions[0].1.starts_with("ses_"), "{sessions:?}");
}

/// A deployment whose OpenCode permission asks before shell commands and edits: run
/// unattended, OpenCode auto-rejects the call and exits 0; the run is a failure.
#[tokio::test]
async fn the_real_opencode_whose_tool_calls_were_refused_fails() {
    let Some(opencode) = installed_opencode() else {
        return;
    };
    let (addr, _seen) = serve(1000, None).await;
    let ask = r#"{"bash":"ask","edit":"ask"}"#;
    let (setup, config) = opencode_project(&opencode, addr, &[("OPENCODE_PERMISSION", ask)], |p| {
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("OpenCode refused tool calls it tried to make (bash)")
            && question.contains("rejected permission"),
        "{question}"
    );
    assert_eq!(
        agent_ledger(&setup, item).await.len(),
        1,
        "its spend is recorded"
    );
}

/// The model server fails the second call with HTTP 400: OpenCode reports the error and
/// exits 1; the first step's spend is recorded and the error is in the question.
#[tokio::test]
async fn the_real_opencode_that_exits_with_an_api_error() {
    let Some(opencode) = installed_opencode() else {
        return;
    };
    const PROMPT_TOKENS: i64 = 1000;
    let (addr, seen) = serve(PROMPT_TOKENS, Some(2)).await;
    let (setup, config) = opencode_project(&opencode, addr, &[], |p| {
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    assert_eq!(seen.lock().unwrap().requests.len(), 2);
    let question = setup.blocked_question(item).await;
    assert!(
        question
            .contains("the agent exited with 1: scripted bad request: the model is unavailable"),
        "{question}"
    );
    let (_, tokens_in, tokens_out, _, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!((tokens_in, tokens_out), (PROMPT_TOKENS, OUTPUT_TOKENS));
    assert!((usd - priced(1, PROMPT_TOKENS)).abs() < 1e-9);
}
