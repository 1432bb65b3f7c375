//! The real Gemini CLI as the project's agent, against a scripted Gemini API inside
//! the test (`streamGenerateContent` as server-sent events). The version CI installs is
//! in `tests/gemini-cli.version`; without `gemini` these tests fail, unless
//! `DAMASCUS_SKIP_GEMINI` is set.
//!
//! What Gemini CLI 0.61.0 does here: one `POST /v1beta/models/MODEL:streamGenerateContent?alt=sse`
//! per turn, with the key in `x-goog-api-key`, and no other request (no token
//! counting, no Code Assist, no telemetry, with the settings Damascus writes). It
//! offers the model `write_file`, `replace`, `run_shell_command`, `read_file` and
//! more; the scripted model writes hello.txt with `write_file`. It reports no dollars:
//! its tokens are priced from data/prices.toml (gemini-2.5-pro). A resumed session
//! sends the whole history again (each earlier tool response twice).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use damascus_core::SpecMode;
use serde_json::{json, Value};

use crate::support::{
    agent_ledger, assert_conversation, assert_resumed_once, greeting_until_merged, header,
    installed_cli, one_agent_row, path_with, resumed_request, run_log, serve_app, session_events,
    transcript, unexpected, Conversation, Setup, Target, GREETING,
};

/// The model the project names, priced in data/prices.toml at 1.25/0.125/10 USD per
/// million tokens (input/cached/output).
const MODEL: &str = "gemini-2.5-pro";
const PRICE_IN: f64 = 1.25 / 1e6;
const PRICE_CACHED: f64 = 0.125 / 1e6;
const PRICE_OUT: f64 = 10.0 / 1e6;
const OUTPUT_TOKENS: i64 = 50;
const KEY: &str = "gemini-test-key";

fn installed_gemini() -> Option<std::path::PathBuf> {
    installed_cli(
        "gemini",
        "gemini",
        "@google/gemini-cli",
        include_str!("../../../../tests/gemini-cli.version"),
    )
}

/// What the scripted model saw.
#[derive(Default)]
struct Seen {
    /// The body of every `streamGenerateContent`.
    requests: Vec<Value>,
    /// `x-goog-api-key` of each.
    keys: Vec<String>,
    /// The path (with the model) of each.
    paths: Vec<String>,
    /// Every other request: method and path.
    others: Vec<String>,
}

#[derive(Clone)]
struct Model {
    /// The prompt tokens (cached ones included) and cached tokens reported per turn.
    prompt_tokens: i64,
    cached_tokens: i64,
    /// Requests from this one on are answered with HTTP 400.
    fail_from: Option<usize>,
    /// Requests from this one on are answered after 10 s (a model thinking).
    slow_from: Option<usize>,
    seen: Arc<Mutex<Seen>>,
}

/// The text of the last user message of a request.
fn last_user_text(body: &Value) -> String {
    body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .map(|last| {
            last["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The scripted turn: `write_file` of hello.txt (`hello`, or `hello again` when the
/// prompt says the previous attempt failed); once its response is back, a final text.
fn reply(body: &Value) -> Vec<Value> {
    let last = body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .unwrap_or_default();
    let answered = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p.get("functionResponse").is_some());
    if answered {
        return vec![json!({"text": "hello.txt now holds hello."})];
    }
    let content = if last_user_text(body).contains("previous attempt failed") {
        "hello again\n"
    } else {
        "hello\n"
    };
    vec![json!({"functionCall": {"name": "write_file",
        "args": {"file_path": "hello.txt", "content": content}}})]
}

/// The reply as `streamGenerateContent?alt=sse` streams it: one chunk.
fn stream(model: &Model, parts: Vec<Value>) -> String {
    let chunk = json!({
        "candidates": [{"content": {"role": "model", "parts": parts},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": model.prompt_tokens,
            "candidatesTokenCount": OUTPUT_TOKENS,
            "cachedContentTokenCount": model.cached_tokens,
            "totalTokenCount": model.prompt_tokens + OUTPUT_TOKENS,
        },
        "modelVersion": MODEL,
    });
    format!("data: {chunk}\r\n\r\n")
}

/// Every request: a model turn is answered, anything else is shown in the test's
/// output and answered not found.
async fn any(
    State(model): State<Model>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if method != Method::POST || !path.ends_with(":streamGenerateContent") {
        let shown = unexpected(&method, &uri, &body);
        model.seen.lock().unwrap().others.push(shown);
        return StatusCode::NOT_FOUND.into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let index = {
        let mut seen = model.seen.lock().unwrap();
        seen.requests.push(body.clone());
        seen.paths.push(uri.to_string());
        seen.keys.push(header(&headers, "x-goog-api-key"));
        seen.requests.len() - 1
    };
    if model.slow_from.is_some_and(|from| index >= from) {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
    if model.fail_from.is_some_and(|from| index >= from) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": 400, "message": "scripted failure: the request is bad", "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    }
    (
        [("content-type", "text/event-stream")],
        stream(&model, reply(&body)),
    )
        .into_response()
}

async fn serve(model: Model) -> SocketAddr {
    serve_app(Router::new().fallback(any).with_state(model)).await
}

fn model(prompt_tokens: i64, cached_tokens: i64) -> (Model, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    (
        Model {
            prompt_tokens,
            cached_tokens,
            fail_from: None,
            slow_from: None,
            seen: seen.clone(),
        },
        seen,
    )
}

/// A passthrough project on Gemini CLI with `MODEL`, and its environment: `gemini`
/// first on PATH, the scripted server as its base URL, the test key.
async fn gemini_project(
    gemini: &Path,
    addr: SocketAddr,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (Setup, damascus_loops::LoopsConfig) {
    let setup = Setup::new().await;
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent_command = None;
            p.agent = damascus_core::AgentKind::Gemini;
            p.agent_model = Some(MODEL.into());
            edit(p);
        })
        .await;
    let mut config = setup.loops_config(None);
    config.agent_env = [
        ("PATH", path_with(&setup, "gemini", gemini).as_str()),
        ("GOOGLE_GEMINI_BASE_URL", &format!("http://{addr}")),
        ("GEMINI_API_KEY", KEY),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (setup, config)
}

fn turn_usd(prompt: i64, cached: i64) -> f64 {
    (prompt - cached) as f64 * PRICE_IN
        + cached as f64 * PRICE_CACHED
        + OUTPUT_TOKENS as f64 * PRICE_OUT
}

#[tokio::test]
async fn the_real_gemini_cli_builds_a_story_that_merges() {
    let Some(gemini) = installed_gemini() else {
        return;
    };
    const PROMPT: i64 = 1000;
    const CACHED: i64 = 200;
    let (scripted, seen) = model(PROMPT, CACHED);
    let addr = serve(scripted).await;
    let (setup, config) = gemini_project(&gemini, addr, |p| p.max_attempts_per_phase = 1).await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        setup.phase(item).await,
        "merged",
        "{} requests; others: {:?}",
        seen.requests.len(),
        seen.others
    );
    // Two turns: the write_file, then the answer to its response; nothing else.
    assert_eq!(seen.requests.len(), 2, "others: {:?}", seen.others);
    assert!(seen.others.is_empty(), "{:?}", seen.others);
    assert!(seen.keys.iter().all(|k| k == KEY), "{:?}", seen.keys);
    assert!(
        seen.paths
            .iter()
            .all(|p| p == &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse")),
        "{:?}",
        seen.paths
    );
    let tools = seen.requests[0]["tools"].to_string();
    assert!(
        tools.contains("\"write_file\"") && tools.contains("\"run_shell_command\""),
        "{tools}"
    );
    let answered = seen.requests[1]["contents"].to_string();
    assert!(
        answered.contains("functionResponse") && answered.contains("hello.txt"),
        "{answered}"
    );
    assert_eq!(setup.main_file("hello.txt").await.trim_end(), "hello");

    // Tokens, priced by Damascus from data/prices.toml; input counts cached ones.
    let (model, tokens_in, tokens_out, tokens_cached, price, usd) =
        one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out, tokens_cached),
        (MODEL, 2 * PROMPT, 2 * OUTPUT_TOKENS, 2 * CACHED)
    );
    let price = price.expect("the row names its price");
    assert!(price.contains("data/prices.toml"), "{price}");
    let priced = 2.0 * turn_usd(PROMPT, CACHED);
    assert!((usd - priced).abs() < 1e-9, "{usd} vs {priced}");

    let events = transcript(&setup, item, "build-1");
    let lines = assert_conversation(
        &events,
        &Conversation {
            model: Some(MODEL),
            session: true,
            tool: "write_file",
            target: Target::Is("hello.txt"),
            turns: 2,
        },
    );
    use damascus_core::transcript::TranscriptEvent as E;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, E::Message { text } if text == "hello.txt now holds hello.")),
        "{lines:#?}"
    );
}

/// Gemini CLI streams no usage until its result, so Damascus reads each reply's
/// tokens from the session file it appends to; the first turn passes the reservation
/// and the run is stopped there.
#[tokio::test]
async fn the_real_gemini_cli_is_stopped_at_the_reservation() {
    let Some(gemini) = installed_gemini() else {
        return;
    };
    // One turn costs about 0.25 USD, more than the item's budget.
    const PROMPT: i64 = 200_000;
    const BUDGET: f64 = 0.10;
    let (mut scripted, seen) = model(PROMPT, 0);
    // The second turn takes long enough for the stop to land while it runs.
    scripted.slow_from = Some(1);
    let addr = serve(scripted).await;
    let (setup, config) = gemini_project(&gemini, addr, |p| {
        p.cost_budget_usd = Some(BUDGET);
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let log = run_log(&setup, item, "build-1");
    eprintln!(
        "the model was asked {} times; the log:\n{log}",
        seen.requests.len()
    );
    assert!(
        (1..=2).contains(&seen.requests.len()),
        "stopped after the first turn: {} requests",
        seen.requests.len()
    );
    assert!(
        !log.contains(r#"{"type":"result""#),
        "stopped before it ended: {log}"
    );
    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("stopped when its usage reached the 0.1000 USD reserved for it"),
        "{question}"
    );
    // What it spent is recorded, with its tokens, although it was stopped.
    let (model, tokens_in, tokens_out, _, _, usd) = one_agent_row(&setup, item).await;
    // The first turn's tokens, as its session file recorded them.
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out),
        (MODEL, PROMPT, OUTPUT_TOKENS)
    );
    let priced = turn_usd(PROMPT, 0);
    assert!((usd - priced).abs() < 1e-9, "{usd} vs {priced}");
}

/// A rebuild after the project's test failed continues Gemini CLI's own session
/// (`--resume`): the model sees the earlier turns, and the failure as the last user
/// message; the item's events say the session was resumed.
#[tokio::test]
async fn the_real_gemini_cli_continues_its_session() {
    let Some(gemini) = installed_gemini() else {
        return;
    };
    let (scripted, seen) = model(1000, 0);
    let addr = serve(scripted).await;
    let (setup, config) = gemini_project(&gemini, addr, |p| {
        p.test_command = Some("grep -qx 'hello again' hello.txt".into());
    })
    .await;
    let item = greeting_until_merged(&setup, config).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let follow_up = resumed_request(&seen.requests, last_user_text);
    let history = follow_up["contents"].to_string();
    assert!(
        follow_up["contents"].as_array().unwrap().len() > 1
            && history.contains("functionCall")
            && history.contains("hello.txt now holds hello."),
        "the earlier turns are in the follow-up: {history}"
    );
    assert_eq!(seen.requests.len(), 4, "{} requests", seen.requests.len());
    assert_resumed_once(&session_events(&setup, item).await, "session");
}

/// A policy that asks before writing (the project's `--policy` agent arg) cannot be
/// answered headless: Gemini CLI refuses the call, the model says it is done, and the
/// CLI ends `success` with exit 0; Damascus fails the run with the refusal.
#[tokio::test]
async fn the_real_gemini_cli_with_its_tools_refused_fails() {
    let Some(gemini) = installed_gemini() else {
        return;
    };
    let (scripted, seen) = model(1000, 0);
    let addr = serve(scripted).await;
    // Gemini CLI loads a policy file only when its name ends .toml.
    let policy = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        policy.path(),
        "[[rule]]\ntoolName = [\"write_file\", \"replace\", \"run_shell_command\"]\ndecision = \"ask_user\"\npriority = 900\n",
    )
    .unwrap();
    let policy_path = policy.path().to_string_lossy().into_owned();
    let (setup, config) = gemini_project(&gemini, addr, |p| {
        p.max_attempts_per_phase = 1;
        p.agent_args = vec!["--policy".into(), policy_path];
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    assert_eq!(seen.lock().unwrap().requests.len(), 2);
    let log = run_log(&setup, item, "build-1");
    assert_eq!(setup.phase(item).await, "blocked", "{log}");
    let question = setup.open_question(item).await.1;
    assert!(
        question.contains("Gemini CLI refused its tool calls (write_file: Tool execution for \"WriteFile\" requires user confirmation"),
        "{question}"
    );
    let events = transcript(&setup, item, "build-1");
    use damascus_core::transcript::TranscriptEvent as E;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, E::ToolResult { ok: false, text, .. } if text.contains("requires user confirmation"))),
        "{events:#?}"
    );
    assert!(matches!(events.last(), Some(E::Result { ok: false, .. })));
    // It spent, and that is recorded.
    assert_eq!(agent_ledger(&setup, item).await.len(), 1);
}

/// The API answers the second turn with HTTP 400: Gemini CLI exits 144 (400 modulo
/// 256) after a result that says why; the first turn's tokens are recorded and the
/// item is blocked with the API's error.
#[tokio::test]
async fn the_real_gemini_cli_that_fails_records_what_it_spent() {
    let Some(gemini) = installed_gemini() else {
        return;
    };
    const PROMPT: i64 = 1000;
    let (mut scripted, seen) = model(PROMPT, 0);
    scripted.fail_from = Some(1);
    let addr = serve(scripted).await;
    let (setup, config) = gemini_project(&gemini, addr, |p| p.max_attempts_per_phase = 1).await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    assert_eq!(seen.lock().unwrap().requests.len(), 2);
    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("the agent exited with 144")
            && question.contains("scripted failure: the request is bad"),
        "{question}"
    );
    let (model, tokens_in, tokens_out, _, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out),
        (MODEL, PROMPT, OUTPUT_TOKENS)
    );
    assert!((usd - turn_usd(PROMPT, 0)).abs() < 1e-9, "{usd}");
}
