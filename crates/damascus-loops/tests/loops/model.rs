//! The spec-refiner against an OpenAI-compatible server inside the test.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use damascus_core::SpecMode;
use damascus_loops::LlmConfig;
use serde_json::{json, Value};

use crate::support::{Setup, CLAUDE_OK};

/// What the fake model answers.
#[derive(Clone)]
enum Script {
    Content(&'static str),
    Sleep(Duration),
}

async fn serve(script: Script) -> SocketAddr {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let script = script.clone();
            async move {
                assert_eq!(headers.get("authorization").unwrap(), "Bearer sk-test");
                assert_eq!(body["model"], "test-model");
                assert_eq!(body["messages"][0]["role"], "system");
                assert!(body["messages"][1]["content"].as_str().unwrap().contains("# Greeting"));
                match script {
                    Script::Sleep(d) => {
                        tokio::time::sleep(d).await;
                        StatusCode::OK.into_response()
                    }
                    Script::Content(content) => (
                        [("x-litellm-response-cost", "0.0123")],
                        Json(json!({
                            "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
                            "usage": {"prompt_tokens": 120, "completion_tokens": 45, "total_tokens": 165}
                        })),
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn llm(addr: SocketAddr, timeout: Duration) -> LlmConfig {
    LlmConfig {
        base_url: format!("http://{addr}/v1"),
        api_key: Some("sk-test".into()),
        model: "test-model".into(),
        timeout,
        prices: Default::default(),
    }
}

async fn refine(script: Script, timeout: Duration) -> (Setup, i64) {
    let addr = serve(script).await;
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup
        .project(&agent, SpecMode::Refine, |p| p.max_attempts_per_phase = 1)
        .await;
    sqlx::query("update damascus_queue_settings set job_attempts = 2")
        .execute(&setup.db.pool)
        .await
        .unwrap();
    let item = setup.ingest("Greeting", "Say hello in hello.txt.").await;
    setup
        .cycle_with(setup.loops_config(Some(llm(addr, timeout))))
        .await;
    (setup, item)
}

#[tokio::test]
async fn a_good_reply_becomes_the_spec_and_its_cost_is_recorded() {
    let reply = r#"{"summary":"Write hello.","acceptance_criteria":["hello.txt holds hello"],"test_command":"grep -qx hello hello.txt","questions":[]}"#;
    let (setup, item) = refine(Script::Content(reply), Duration::from_secs(10)).await;
    assert_eq!(setup.phase(item).await, "merged");
    let llm_cost: (String, i64, i64, f64) = sqlx::query_as(
        "select model, tokens_in, tokens_out, usd::float8 from cost_ledger where item_id = $1 and source = 'llm'",
    )
    .bind(item)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(llm_cost, ("test-model".into(), 120, 45, 0.0123));
}

#[tokio::test]
async fn a_malformed_reply_fails_with_the_reason() {
    let (setup, item) = refine(
        Script::Content("Sure! The spec is: do it."),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(setup.phase(item).await, "blocked");
    let question = setup.open_question(item).await.1;
    assert!(question.contains("not a spec: not JSON"), "{question}");
}

#[tokio::test]
async fn a_reply_that_asks_becomes_a_human_issue() {
    let (setup, item) = refine(
        Script::Content(r#"{"questions":["Which greeting: hello or hi?"]}"#),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(setup.phase(item).await, "blocked");
    assert_eq!(
        setup.open_question(item).await.1,
        "Which greeting: hello or hi?"
    );
}

#[tokio::test]
async fn a_model_that_times_out_is_retried_then_blocks() {
    let slow = Script::Sleep(Duration::from_secs(5));
    let (setup, item) = refine(slow.clone(), Duration::from_millis(300)).await;
    // A retry that still waits out its backoff is not runnable when a cycle ends; the
    // next cycle runs it.
    let config = setup.loops_config(Some(llm(serve(slow).await, Duration::from_millis(300))));
    for _ in 0..20 {
        if setup.phase(item).await == "blocked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        setup.cycle_with(config.clone()).await;
    }
    assert_eq!(setup.phase(item).await, "blocked");
    let question = setup.open_question(item).await.1;
    assert!(
        question.contains("did not answer within") && question.contains("2 runs"),
        "{question}"
    );
    // Each call that timed out may still be billed: the ledger says its spend is unknown.
    let unknown: Vec<String> = sqlx::query_scalar(
        "select model from cost_ledger where item_id = $1 and source = 'llm' order by id",
    )
    .bind(item)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(
        unknown, ["test-model (spend unknown: no answer in time)"; 2],
        "one row per call"
    );
}

/// A question the spec-refiner raised, answered: the refiner's next request carries the
/// question and the answer, the model writes the spec, and the item goes on to build
/// (and here, to merged).
#[tokio::test]
async fn an_answered_spec_question_reaches_the_model() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let requests = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let requests = requests.clone();
            async move {
                let prompt = body["messages"][1]["content"].as_str().unwrap().to_owned();
                requests.lock().unwrap().push(prompt.clone());
                let content = if prompt.contains("Use hello, in lowercase.") {
                    r#"{"summary":"Write hello.","acceptance_criteria":["hello.txt holds hello"],"test_command":"grep -qx hello hello.txt","questions":[]}"#
                } else {
                    r#"{"questions":["Which greeting: hello or hi?"]}"#
                };
                Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup.project(&agent, SpecMode::Refine, |_| {}).await;
    let item = setup.ingest("Greeting", "Greet the reader.").await;
    let config = setup.loops_config(Some(llm(addr, Duration::from_secs(10))));
    setup.cycle_with(config.clone()).await;
    assert_eq!(setup.phase(item).await, "blocked");
    let (issue, question) = setup.open_question(item).await;
    assert_eq!(question, "Which greeting: hello or hi?");
    let answered =
        damascus_db::human::answer(&setup.db.pool, issue, "Use hello, in lowercase.", "ana")
            .await
            .unwrap();
    assert_eq!(answered.resumed_in, Some(damascus_core::Phase::Spec));
    setup.cycle_with(config).await;
    assert_eq!(setup.phase(item).await, "merged");
    let prompts = seen.lock().unwrap().clone();
    assert_eq!(prompts.len(), 2);
    assert!(!prompts[0].contains("Guidance"), "{}", prompts[0]);
    assert!(
        prompts[1].contains("### Damascus asked\nWhich greeting: hello or hi?")
            && prompts[1].contains("### ana answered\nUse hello, in lowercase."),
        "{}",
        prompts[1]
    );
}

/// A spec as the fake models answer it.
const SPEC: &str = r#"{"summary":"Write hello.","acceptance_criteria":["hello.txt holds hello"],"test_command":"grep -qx hello hello.txt","questions":[]}"#;

fn completion(content: &str) -> axum::response::Response {
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

/// A chat-completions server that answers every request with `answer` and keeps the
/// request bodies.
async fn serve_recording(
    answer: fn(&Value) -> axum::response::Response,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let requests = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let requests = requests.clone();
            async move {
                let response = answer(&body);
                requests.lock().unwrap().push(body);
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A project whose spec phase gets one attempt and one job run: a request that cost
/// the item an attempt or a retry would block it. Its agent changes a file on every
/// run, so each item has a commit to merge.
async fn one_attempt_setup() -> Setup {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\necho $$ >> runs.txt\n{CLAUDE_OK}"),
    );
    setup
        .project(&agent, SpecMode::Refine, |p| p.max_attempts_per_phase = 1)
        .await;
    sqlx::query("update damascus_queue_settings set job_attempts = 1")
        .execute(&setup.db.pool)
        .await
        .unwrap();
    setup
}

/// The request asks for the spec's schema in strict mode, as a server that enforces
/// `response_format` checks it; unconstrained, this model answers prose.
#[tokio::test]
async fn the_spec_schema_goes_with_the_request_and_the_item_leaves_spec() {
    fn strict_spec_only(body: &Value) -> axum::response::Response {
        let format = &body["response_format"];
        let schema = &format["json_schema"]["schema"];
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let enforced = format["type"] == "json_schema"
            && format["json_schema"]["name"] == "spec"
            && format["json_schema"]["strict"] == true
            && schema["additionalProperties"] == false
            && [
                "summary",
                "acceptance_criteria",
                "test_command",
                "questions",
            ]
            .iter()
            .all(|field| required.contains(field) && schema["properties"][field].is_object());
        completion(if enforced {
            SPEC
        } else {
            "Sure! Write hello into hello.txt and check it with grep."
        })
    }
    let (addr, seen) = serve_recording(strict_spec_only).await;
    let setup = one_attempt_setup().await;
    let item = setup.ingest("Greeting", "Say hello in hello.txt.").await;
    setup
        .cycle_with(setup.loops_config(Some(llm(addr, Duration::from_secs(10)))))
        .await;
    assert_eq!(
        setup.steps(item).await.first().map(String::as_str),
        Some("spec>build")
    );
    assert_eq!(setup.phase(item).await, "merged");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// An endpoint that refuses `response_format` is asked again at once without it, in
/// the same phase run, and is not offered it again in this process: not by the next
/// item, not by a new `Loops`. Another model on the same endpoint is offered it.
#[tokio::test]
async fn an_endpoint_that_refuses_response_format_is_asked_in_prose_from_then_on() {
    fn no_response_format(body: &Value) -> axum::response::Response {
        if body.get("response_format").is_some() {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {
                    "message": "Unrecognized request argument supplied: response_format",
                    "type": "invalid_request_error", "param": "response_format", "code": null
                }})),
            )
                .into_response();
        }
        completion(SPEC)
    }
    let (addr, seen) = serve_recording(no_response_format).await;
    let setup = one_attempt_setup().await;
    let mut items = vec![];
    for model in ["test-model", "test-model", "other-model"] {
        let item = setup.ingest("Greeting", "Say hello in hello.txt.").await;
        let mut config = llm(addr, Duration::from_secs(10));
        config.model = model.into();
        setup.cycle_with(setup.loops_config(Some(config))).await;
        assert_eq!(
            setup.phase(item).await,
            "merged",
            "{model}: {:?}",
            setup.steps(item).await
        );
        items.push(item);
    }
    for item in items {
        assert_eq!(
            setup.steps(item).await.first().map(String::as_str),
            Some("spec>build")
        );
    }
    let requests: Vec<(String, bool)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|body| {
            (
                body["model"].as_str().unwrap().to_owned(),
                body.get("response_format").is_some(),
            )
        })
        .collect();
    let asked = |model: &str, structured| (model.to_owned(), structured);
    assert_eq!(
        requests,
        [
            asked("test-model", true),
            asked("test-model", false),
            asked("test-model", false),
            asked("other-model", true),
            asked("other-model", false),
        ]
    );
}
