//! The webhook routes: what the CLI's `damascus webhook` does, over HTTP, with the same
//! refusals; a test delivery reaches a receiver that checks its signature.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use damascus_relay::signature;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{message, TestApp};

impl TestApp {
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(self.request(reqwest::Method::DELETE, path)).await
    }
}

/// Each delivery a receiver took: its headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver that answers `status` and keeps each delivery.
async fn receiver(status: u16) -> (String, Received) {
    let got: Received = Arc::default();
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook?token=T0PSECRET"), got)
}

#[tokio::test]
async fn webhooks_are_added_listed_tested_redriven_and_removed() {
    let app = TestApp::spawn().await;
    let (url, got) = receiver(204).await;
    let (status, added) = app
        .post(
            "/v1/webhooks",
            &json!({"name": "chat", "url": url, "events": ["item.blocked", "webhook.test"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let secret = added["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{added}");
    assert_eq!(added["webhook"]["name"], "chat");
    assert_eq!(added["webhook"]["max_attempts"], 10);
    assert!(
        !added["webhook"].to_string().contains("T0PSECRET"),
        "the URL's query stays out: {added}"
    );

    // Listed with its deliveries, and shown alone; neither shows the secret.
    app.ingest("web", "one").await;
    let (status, listed) = app.get("/v1/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    let hooks = listed["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{listed}");
    assert_eq!(hooks[0]["host"], url.split('/').nth(2).unwrap());
    assert_eq!(
        hooks[0]["event_kinds"],
        json!(["item.blocked", "webhook.test"])
    );
    // item.ingested is not in its filter: nothing pending.
    assert_eq!(hooks[0]["pending"], 0, "{listed}");
    let (status, shown) = app.get("/v1/webhooks/chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["name"], "chat");
    assert!(!listed.to_string().contains(&secret) && !shown.to_string().contains(&secret));

    // A test delivery arrives signed with the secret handed out at creation.
    let (status, tested) = app.post("/v1/webhooks/chat/test", &json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{tested}");
    assert_eq!(tested["delivered"], true, "{tested}");
    assert_eq!(tested["status"], 204);
    let (headers, body) = got.lock().unwrap().pop().unwrap();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let key = signature::parse_secret(&secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        &key,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &body,
        now,
        300,
    )
    .expect("the test delivery verifies");
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["kind"], "webhook.test");

    // Redrive: nothing dead yet; --since queues every event it subscribes to.
    let (status, redriven) = app.post("/v1/webhooks/chat/redrive", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{redriven}");
    assert_eq!(redriven["queued"], 0);
    let (status, redriven) = app
        .post_raw("/v1/webhooks/chat/redrive", "application/json", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{redriven}");

    let (status, removed) = app.delete("/v1/webhooks/chat").await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(app.get("/v1/webhooks").await.1["webhooks"], json!([]));
    assert_eq!(app.get("/v1/webhooks/chat").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_receiver_that_refuses_the_test_is_reported_not_an_error() {
    let app = TestApp::spawn().await;
    let (url, got) = receiver(503).await;
    let (status, _) = app
        .post("/v1/webhooks", &json!({"name": "down", "url": url}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, tested) = app.post("/v1/webhooks/down/test", &json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{tested}");
    assert_eq!(tested["delivered"], false);
    assert_eq!(tested["status"], 503);
    let error = tested["error"].as_str().unwrap();
    assert!(
        error.contains("503") && !error.contains("T0PSECRET"),
        "{error}"
    );
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_webhook_requests_say_what_was_wrong() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .post(
            "/v1/webhooks",
            &json!({"name": "chat", "url": "https://chat.example/hook"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // (body, status, what the message says)
    let cases: Vec<(Value, StatusCode, &[&str])> = vec![
        (
            json!({"name": "chat", "url": "https://other.example/"}),
            StatusCode::CONFLICT,
            &["a webhook named \"chat\" exists already"],
        ),
        (
            json!({"name": "Chat Room", "url": "https://x.example/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["name: ", "lowercase letters"],
        ),
        (
            json!({"name": "x", "url": "ftp://x.example/hook?token=abc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["url: ", "http:// or https://"],
        ),
        (
            json!({"name": "x", "url": "https://x.example/", "events": ["item.blokced"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["events: ", "item.blokced", "item.blocked"],
        ),
        (
            json!({"name": "x", "url": "https://x.example/", "secret": "hunter2"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["secret: ", "whsec_"],
        ),
        (
            json!({"name": "x", "url": "https://x.example/", "max_attempts": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["max_attempts: ", "between 1 and 100"],
        ),
        (
            json!({"name": "x", "url": "https://x.example/", "retries": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["unknown field `retries`"],
        ),
        (
            json!({"url": "https://x.example/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["missing field `name`"],
        ),
    ];
    for (body, status, needles) in cases {
        let (got, answer) = app.post("/v1/webhooks", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        let text = message(&answer);
        for needle in needles {
            assert!(text.contains(needle), "{body}: {text:?} lacks {needle:?}");
        }
        assert!(
            !text.contains("token=abc") && !text.contains("hunter2"),
            "{text}"
        );
    }

    let redrives: Vec<(&str, Value, StatusCode, &[&str])> = vec![
        (
            "/v1/webhooks/nope/redrive",
            json!({}),
            StatusCode::NOT_FOUND,
            &["no webhook named \"nope\""],
        ),
        (
            "/v1/webhooks/chat/redrive",
            json!({"event": 999999}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["event 999999 not found"],
        ),
        (
            "/v1/webhooks/chat/redrive",
            json!({"event": 1, "since": "2026-12-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["not both"],
        ),
        (
            "/v1/webhooks/chat/redrive",
            json!({"since": "yesterday"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["RFC 3339"],
        ),
        (
            "/v1/webhooks/chat/redrive",
            json!({"event": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            &["positive integer"],
        ),
        (
            "/v1/webhooks/nope/test",
            json!(null),
            StatusCode::NOT_FOUND,
            &["no webhook named \"nope\""],
        ),
    ];
    for (path, body, status, needles) in redrives {
        let (got, answer) = app.post(path, &body).await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        let text = message(&answer);
        for needle in needles {
            assert!(text.contains(needle), "{path}: {text:?} lacks {needle:?}");
        }
    }
    let (status, answer) = app.delete("/v1/webhooks/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        message(&answer).contains("damascus webhook list")
            || message(&answer).contains("no webhook")
    );
}
