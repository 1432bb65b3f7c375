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
