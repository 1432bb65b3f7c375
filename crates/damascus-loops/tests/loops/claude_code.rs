//! The real Claude Code CLI as the default agent (`agent_command` unset, so Damascus
//! builds its argv), against a scripted Anthropic Messages API inside the test. The
//! version CI installs is in `tests/claude-code.version`. Without `claude` (on PATH, or
//! at `DAMASCUS_CLAUDE_BIN`) these tests skip, unless `DAMASCUS_REQUIRE_CLAUDE` is set.
//!
//! What Claude Code 2.1.197 does here: it sends `HEAD /` once (a reachability check;
//! a 404 is fine), then one streaming `POST /v1/messages?beta=true` per turn, with
//! the model of `ANTHROPIC_MODEL` and the key in `x-api-key`. It prices each turn
//! itself from the usage the server reports, under the model it asked for (not the one
//! the response names), and checks `--max-budget-usd` after each turn: a turn that
//! passes the budget is the last, its tool calls are not run. It needs nothing in the
//! empty HOME Damascus gives it (it writes its own `.claude.json` there), and runs as
//! root under `--permission-mode dontAsk`. Without `ANTHROPIC_MODEL` it asks for
//! `claude-opus-4-8` and reports it as `claude-opus-4-8[1m]`; a model it does not know
//! it prices at 5/25 USD per million tokens in/out.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    agent_ledger, assert_conversation, assert_resumed_once, find_cli, greeting_until_merged,
    header, one_agent_row, path_with, resumed_request, run_log, serve_app, session_events,
    transcript, unexpected, Conversation, Setup, Target, GREETING,
};

/// The model the agent is told to use and the server answers as; Claude Code knows its
/// price (3 USD per million input tokens, 15 per million output tokens).
pub(crate) const MODEL: &str = "claude-sonnet-4-5-20250929";
const PRICE_IN: f64 = 3.0 / 1e6;
const PRICE_OUT: f64 = 15.0 / 1e6;
const OUTPUT_TOKENS: i64 = 50;

/// `claude`'s path, or `None` (after saying so) when it is not installed and not
/// required.
pub(crate) fn installed_claude() -> Option<PathBuf> {
    let found = find_cli("claude", "claude");
    if found.is_none() {
        if std::env::var_os("DAMASCUS_REQUIRE_CLAUDE").is_some() {
            panic!(
                "claude is not on PATH nor at DAMASCUS_CLAUDE_BIN; install Claude Code: npm install -g @anthropic-ai/claude-code@{}",
                include_str!("../../../../tests/claude-code.version").trim()
            );
        }
        eprintln!("skipped: claude is not installed (set DAMASCUS_CLAUDE_BIN, or DAMASCUS_REQUIRE_CLAUDE to fail instead)");
    }
    found
}

/// What the scripted model saw.
#[derive(Default)]
struct Seen {
    /// The body of every `POST /v1/messages`.
    messages: Vec<Value>,
    /// `x-api-key` of every `POST /v1/messages`.
    keys: Vec<String>,
    /// Every other request: method and path.
    others: Vec<String>,
}

#[derive(Clone)]
struct Model {
    /// Input tokens reported for each turn.
    input_tokens: i64,
    seen: Arc<Mutex<Seen>>,
}

/// The directory Claude Code runs in, from its system prompt's environment section.
pub(crate) fn working_directory(body: &Value) -> Option<String> {
    let system = body["system"].to_string();
    let (_, rest) = system.split_once("Primary working directory: ")?;
    let end = rest.find("\\n")?;
    Some(rest[..end].to_owned())
}

/// The text of the last message of a request (its text blocks, or its string).
pub(crate) fn last_message_text(body: &Value) -> String {
    let last = &body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    match &last["content"] {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The scripted turn: a `Write` of hello.txt first (`hello`, or `hello again` when the
/// prompt says the previous attempt failed); once its result is back, a final text.
pub(crate) fn reply(body: &Value) -> (Vec<Value>, &'static str) {
    // A resumed session's new prompt arrives in one user message with the earlier
    // run's last tool result: the prompt wins.
    let follow_up = last_message_text(body).contains("previous attempt failed");
    let tool_result_back = !follow_up
        && body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_array())
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "tool_result");
    if tool_result_back {
        return (
            vec![json!({"type": "text", "text": "hello.txt now holds hello."})],
            "end_turn",
        );
    }
    let dir =
        working_directory(body).expect("Claude Code's system prompt names its working directory");
    let content = if follow_up {
        "hello again\n"
    } else {
        "hello\n"
    };
    (
        vec![json!({
            "type": "tool_use", "id": format!("toolu_hello_{}", message_id()), "name": "Write",
            "input": {"file_path": format!("{dir}/hello.txt"), "content": content},
        })],
        "tool_use",
    )
}

/// A new message id per reply, as the API gives: Claude Code rebuilds a resumed
/// session from its messages by id, so replies sharing one id would merge.
pub(crate) fn message_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "msg_scripted_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The reply to a `POST /v1/messages` with `body`: `content` from `model`, ending with
/// `stop`, having used `usage`; streamed as server-sent events when the request asks.
pub(crate) fn respond(
    body: &Value,
    model: &str,
    content: &[Value],
    stop: &str,
    usage: Value,
) -> Response {
    if body["stream"] == true {
        return (
            [("content-type", "text/event-stream")],
            stream(model, content, stop, &usage),
        )
            .into_response();
    }
    Json(json!({
        "id": message_id(), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": usage,
    }))
    .into_response()
}

/// The reply as the Messages API streams it (server-sent events): `usage` in
/// `message_start` with one output token, its output tokens in `message_delta`.
fn stream(model: &str, content: &[Value], stop: &str, usage: &Value) -> String {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": start_usage,
        }}),
    )];
    for (index, block) in content.iter().enumerate() {
        let (start, delta) = if block["type"] == "text" {
            (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": block["text"]}),
            )
        } else {
            (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
            )
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": usage["output_tokens"]}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

async fn messages(
    State(model): State<Model>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    {
        let mut seen = model.seen.lock().unwrap();
        seen.messages.push(body.clone());
        seen.keys.push(header(&headers, "x-api-key"));
    }
    let name = body["model"].as_str().unwrap_or(MODEL).to_owned();
    let (content, stop) = reply(&body);
    let usage = json!({"input_tokens": model.input_tokens, "output_tokens": OUTPUT_TOKENS});
    respond(&body, &name, &content, stop, usage)
}

/// Any other request is shown in the test's output, so a new need of Claude Code is
/// seen; token counting is answered, the rest is not found.
async fn other(State(model): State<Model>, method: Method, uri: Uri, body: Bytes) -> Response {
    let shown = unexpected(&method, &uri, &body);
    model.seen.lock().unwrap().others.push(shown);
    if uri.path() == "/v1/messages/count_tokens" {
        return Json(json!({"input_tokens": model.input_tokens})).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn serve(input_tokens: i64) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .fallback(other)
        .with_state(Model {
            input_tokens,
            seen: seen.clone(),
        });
    (serve_app(app).await, seen)
}

/// A passthrough project on the default agent, and the agent's environment: `claude`
/// first on PATH (the agent's PATH is the worker's, which an `agent_env` PATH
/// replaces), the scripted server, and no traffic to anywhere else.
pub(crate) async fn claude_project(
    claude: &std::path::Path,
    addr: SocketAddr,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (Setup, damascus_loops::LoopsConfig) {
    claude_project_in(Setup::new().await, claude, addr, edit).await
}

/// `claude_project` in a setup made by the caller.
async fn claude_project_in(
    setup: Setup,
    claude: &std::path::Path,
    addr: SocketAddr,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (Setup, damascus_loops::LoopsConfig) {
    let path = path_with(&setup, "claude", claude);
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent_command = None;
            p.agent = damascus_core::AgentKind::Claude;
            edit(p);
        })
        .await;
    let mut config = setup.loops_config(None);
    config.agent_env = [
        ("PATH", path.as_str()),
        ("ANTHROPIC_BASE_URL", &format!("http://{addr}")),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("ANTHROPIC_MODEL", MODEL),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (setup, config)
}

#[tokio::test]
async fn the_real_claude_code_builds_a_story_that_merges() {
    let Some(claude) = installed_claude() else {
        return;
    };
    const INPUT_TOKENS: i64 = 1000;
    let (addr, seen) = serve(INPUT_TOKENS).await;
    let (setup, config) = claude_project(&claude, addr, |p| p.max_attempts_per_phase = 1).await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let phase = setup.phase(item).await;
    assert_eq!(
        phase,
        "merged",
        "requests: {:?}; others: {:?}",
        seen.messages.len(),
        seen.others
    );
    // Two turns: the Write, then the answer to its result.
    assert_eq!(seen.messages.len(), 2, "others: {:?}", seen.others);
    assert!(
        seen.keys.iter().all(|k| k == "sk-ant-test"),
        "{:?}",
        seen.keys
    );
    assert!(seen.messages.iter().all(|m| m["model"] == MODEL));
    let result = seen.messages[1]["messages"].to_string();
    assert!(
        result.contains("tool_result") && result.contains("hello.txt"),
        "{result}"
    );
    assert_eq!(setup.main_file("hello.txt").await.trim_end(), "hello");

    // Claude Code's own figures, per model: the server's tokens at its price.
    let rows = agent_ledger(&setup, item).await;
    let (model, tokens_in, tokens_out, _, _, usd) = rows
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no agent row in {rows:?}"));
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out),
        (MODEL, 2 * INPUT_TOKENS, 2 * OUTPUT_TOKENS)
    );
    let priced = 2.0 * (INPUT_TOKENS as f64 * PRICE_IN + OUTPUT_TOKENS as f64 * PRICE_OUT);
    eprintln!("Claude Code reported {usd} USD for 2 turns (priced {priced})");
    assert!((usd - priced).abs() < 1e-6, "{usd} vs {priced}");

    // The transcript beside the raw log: the conversation, normalised.
    assert_conversation(
        &transcript(&setup, item, "build-1"),
        &Conversation {
            model: None,
            session: false,
            tool: "Write",
            target: Target::EndsWith("hello.txt"),
            turns: 2,
        },
    );
}

#[tokio::test]
async fn the_real_claude_code_stops_at_the_reserved_budget() {
    let Some(claude) = installed_claude() else {
        return;
    };
    // One turn costs 0.6 USD, six times the item's budget.
    const INPUT_TOKENS: i64 = 200_000;
    const BUDGET: f64 = 0.10;
    let turn = INPUT_TOKENS as f64 * PRICE_IN + OUTPUT_TOKENS as f64 * PRICE_OUT;
    let (addr, seen) = serve(INPUT_TOKENS).await;
    let (setup, config) = claude_project(&claude, addr, |p| {
        p.cost_budget_usd = Some(BUDGET);
        p.max_attempts_per_phase = 3;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config).await;

    // Claude Code checks the budget after a turn: the first turn passed it, so it
    // stopped there, without running the Write it was asked for.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.messages.len(), 1, "others: {:?}", seen.others);
    let log = run_log(&setup, item, "build-1");
    assert!(
        log.contains(r#""subtype":"error_max_budget_usd""#)
            && log.contains("Reached maximum budget ($0.1)"),
        "{log}"
    );

    // What it spent is recorded per model although the run failed, and nothing else.
    let (model, tokens_in, tokens_out, _, _, usd) = one_agent_row(&setup, item).await;
    assert_eq!(setup.ledger_rows(item).await, 1, "only the agent's row");
    assert_eq!(
        (model.as_str(), tokens_in, tokens_out),
        (MODEL, INPUT_TOKENS, OUTPUT_TOKENS)
    );
    eprintln!("Claude Code spent {usd} USD under a {BUDGET} USD budget (one turn: {turn})");
    assert!((usd - turn).abs() < 1e-6, "{usd} vs {turn}");
    let spent: f64 = sqlx::query_scalar("select cost_usd::float8 from work_items where id = $1")
        .bind(item)
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    assert!(spent <= BUDGET + turn + 1e-9, "{spent}");

    // No further run starts: the budget is spent, a person decides.
    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("has spent 0.6008 USD of its 0.1000 USD budget"),
        "{question}"
    );
}

/// The real Claude Code, on a Gitea that answers the pull request's creation with a
/// rate limit: the agent's one conversation is kept, the limit is waited out, and the
/// story merges with the model asked once.
#[tokio::test]
async fn the_real_claude_code_runs_once_when_the_forge_says_slow_down() {
    let Some(claude) = installed_claude() else {
        return;
    };
    let (addr, seen) = serve(1000).await;
    let setup = Setup::new().await;
    let faults =
        crate::faults::Faults::with(vec![crate::faults::rate_limit("POST", "/pulls", 429, 2)]);
    let url = crate::gitea::serve_faulty_gitea(&setup.remote, faults.clone()).await;
    let (setup, config) = claude_project_in(setup, &claude, addr, |p| {
        p.max_attempts_per_phase = 1;
        p.forge_kind = damascus_core::ForgeKind::Gitea;
        p.forge_repo = Some("acme/web".into());
        p.forge_url = Some(url.clone());
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while setup.phase(item).await != "merged" {
        assert!(
            std::time::Instant::now() < deadline,
            "not merged: {}",
            setup.phase(item).await
        );
        setup.cycle_with(config.clone()).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(faults.faulted().len(), 1, "the rate limit was played");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        seen.messages.len(),
        2,
        "one conversation of two turns: the agent ran once; others: {:?}",
        seen.others
    );
    assert_eq!(
        agent_ledger(&setup, item).await.len(),
        1,
        "one agent run's cost, recorded once"
    );
}

/// A rebuild after a failed review continues the agent's own session: the model is
/// sent the earlier conversation, and the failure as the last user message, with no
/// second copy of the spec; the item's events say the session was resumed.
#[tokio::test]
async fn the_real_claude_code_continues_its_session_after_a_failed_review() {
    let Some(claude) = installed_claude() else {
        return;
    };
    let (addr, seen) = serve(1000).await;
    let (setup, config) = claude_project(&claude, addr, |p| {
        p.test_command = Some("grep -qx 'hello again' hello.txt".into());
    })
    .await;
    let item = greeting_until_merged(&setup, config).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let follow_up = resumed_request(&seen.messages, last_message_text);
    let history = follow_up["messages"].to_string();
    assert!(
        follow_up["messages"].as_array().unwrap().len() > 1 && history.contains("toolu_hello"),
        "the earlier turns are in the follow-up: {history}"
    );
    // Two builds, two conversations of two turns each; the second carried the first.
    assert_eq!(seen.messages.len(), 4, "{} requests", seen.messages.len());
    assert_resumed_once(&session_events(&setup, item).await, "session");
}
