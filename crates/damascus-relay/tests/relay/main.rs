//! The webhook relay against webhook servers inside the test, and retention, on a real
//! database: deliveries per webhook, in order, signed; a webhook that is down delays
//! only itself; dead deliveries redriven; nothing undelivered pruned.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use damascus_db::webhooks::{self, NewWebhook, Redrive};
use damascus_relay::{deliver_round, prune_once, signature, RelayConfig, RetentionConfig};
use damascus_testdb::TestDatabase;

/// What a webhook server received: the event id from `webhook-id`, its kind, and the
/// raw request to verify.
#[derive(Debug, Clone)]
struct Received {
    msg_id: String,
    kind: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<Received>>>,
    down: Arc<Mutex<bool>>,
}

impl Hook {
    fn kinds_and_ids(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{}:{}", r.msg_id, r.kind))
            .collect()
    }

    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }
}

async fn serve(hook: Hook) -> String {
    let app = Router::new().route(
        "/hooks/secret-token",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let hook = hook.clone();
            async move {
                if *hook.down.lock().unwrap() {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let header = |name: &str| headers[name].to_str().unwrap().to_owned();
                hook.received.lock().unwrap().push(Received {
                    msg_id: header("webhook-id"),
                    kind: header("x-damascus-event"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body: body.to_vec(),
                });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks/secret-token")
}

async fn with_project() -> TestDatabase {
    let db = TestDatabase::new().await;
    sqlx::query("insert into projects (name, repository) values ('web', '/x')")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

/// Registers a webhook; returns its signing key.
async fn add_webhook(db: &TestDatabase, name: &str, url: &str, max_attempts: i32) -> Vec<u8> {
    let secret = signature::new_secret();
    webhooks::add(
        &db.pool,
        &NewWebhook {
            name: name.into(),
            url: url.into(),
            secret: secret.clone(),
            event_kinds: None,
            max_attempts,
        },
    )
    .await
    .unwrap();
    signature::parse_secret(&secret).unwrap()
}

/// Ingests `n` stories: `n` item.ingested events.
async fn ingest(db: &TestDatabase, n: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let story = damascus_core::Story::new(&format!("story {i}"), "").unwrap();
        damascus_db::items::ingest(
            &db.pool,
            &damascus_core::ProjectName::parse("web").unwrap(),
            &story,
            "test",
        )
        .await
        .unwrap();
    }
    for id in sqlx::query_scalar::<_, i64>("select id from events_outbox order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
    {
        ids.push(id);
    }
    ids
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Makes every backed-off delivery due now.
async fn due_now(db: &TestDatabase) {
    sqlx::query("update webhook_deliveries set next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Checks a received delivery's signature with `key`, over `body` (its own, or another).
fn verify(key: &[u8], got: &Received, body: &[u8]) -> Result<(), signature::VerifyError> {
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        key,
        &got.msg_id,
        &got.timestamp,
        &got.signature,
        body,
        now,
        300,
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn expected(ids: &[i64]) -> Vec<String> {
    ids.iter()
        .map(|id| format!("msg_{id}:item.ingested"))
        .collect()
}

#[tokio::test]
async fn events_are_delivered_once_each_in_order_and_signed() {
    let db = with_project().await;
    let hook = Hook::default();
    let key = add_webhook(&db, "chat", &serve(hook.clone()).await, 10).await;
    let ids = ingest(&db, 3).await;
    let config = RelayConfig::default();
    assert_eq!(deliver_round(&db.pool, &http(), &config).await.unwrap(), 3);
    assert_eq!(deliver_round(&db.pool, &http(), &config).await.unwrap(), 0);
    assert_eq!(hook.kinds_and_ids(), expected(&ids));
    let now = chrono::Utc::now().timestamp();
    for got in hook.received.lock().unwrap().iter() {
        signature::verify(
            &key,
            &got.msg_id,
            &got.timestamp,
            &got.signature,
            &got.body,
            now,
            300,
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(format!("msg_{}", body["id"]), got.msg_id);
    }
    assert_eq!(
        count(
            &db,
            "select count(*) from webhook_deliveries where state = 'delivered'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn a_webhook_that_is_down_delays_only_itself() {
    let db = with_project().await;
    let (up, down) = (Hook::default(), Hook::default());
    add_webhook(&db, "up", &serve(up.clone()).await, 10).await;
    add_webhook(&db, "down", &serve(down.clone()).await, 10).await;
    down.set_down(true);
    let ids = ingest(&db, 3).await;
    let config = RelayConfig::default();
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    assert_eq!(
        up.kinds_and_ids(),
        expected(&ids),
        "the healthy one at once"
    );
    assert!(down.kinds_and_ids().is_empty());
    let retrying = count(
        &db,
        "select count(*) from damascus_webhooks where name = 'down' and retrying = 1 and pending = 2",
    )
    .await;
    assert_eq!(
        retrying, 1,
        "the down one's first delivery retries, the rest wait"
    );
    // Still down for a few rounds; then it recovers.
    for _ in 0..3 {
        due_now(&db).await;
        deliver_round(&db.pool, &http(), &config).await.unwrap();
    }
    down.set_down(false);
    due_now(&db).await;
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    assert_eq!(
        down.kinds_and_ids(),
        expected(&ids),
        "all of them, in order"
    );
    assert_eq!(
        up.kinds_and_ids(),
        expected(&ids),
        "no duplicates at the healthy one"
    );
}

#[tokio::test]
async fn a_dead_delivery_is_redriven_signed_and_a_tampered_body_is_refused() {
    let db = with_project().await;
    let hook = Hook::default();
    let url = serve(hook.clone()).await;
    let key = add_webhook(&db, "chat", &url, 2).await;
    hook.set_down(true);
    let ids = ingest(&db, 1).await;
    let config = RelayConfig::default();
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    let (state, attempts, status, error, backed_off): (String, i32, Option<i32>, String, bool) =
        sqlx::query_as(
            "select state::text, attempts, last_status, last_error, next_attempt_at > now() + interval '1 second'
             from webhook_deliveries",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts, status),
        ("retrying", 1, Some(503))
    );
    assert!(
        error.contains("answered 503") && !error.contains("secret-token"),
        "{error}"
    );
    assert!(backed_off);
    due_now(&db).await;
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    assert_eq!(
        count(&db, "select count(*) from damascus_webhooks where dead = 1").await,
        1
    );
    // Dead is final until a person sends it again.
    due_now(&db).await;
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    assert!(hook.kinds_and_ids().is_empty());
    hook.set_down(false);
    assert_eq!(
        webhooks::redrive(&db.pool, "chat", Redrive::Dead)
            .await
            .unwrap(),
        1
    );
    deliver_round(&db.pool, &http(), &config).await.unwrap();
    assert_eq!(hook.kinds_and_ids(), expected(&ids));
    let got = hook.received.lock().unwrap()[0].clone();
    verify(&key, &got, &got.body).unwrap();
    let mut tampered = got.body.clone();
    tampered.extend_from_slice(b" ");
    assert!(verify(&key, &got, &tampered).is_err());
    // A redrive by event sends a delivered one again; an unknown event is refused.
    assert_eq!(
        webhooks::redrive(&db.pool, "chat", Redrive::Event(ids[0]))
            .await
            .unwrap(),
        1
    );
    let unknown = webhooks::redrive(&db.pool, "chat", Redrive::Event(999_999))
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("event 999999 not found"),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_batch_that_dies_before_its_commit_loses_nothing() {
    let db = with_project().await;
    let hook = Hook::default();
    add_webhook(&db, "chat", &serve(hook.clone()).await, 10).await;
    let ids = ingest(&db, 3).await;
    let webhook = webhooks::get(&db.pool, "chat").await.unwrap();
    // A relay claims the batch, sends it, and dies before recording anything.
    let batch = webhooks::claim(&db.pool, webhook.id, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.deliveries.len(), 3);
    // While it holds the webhook, another relay skips it.
    assert!(webhooks::claim(&db.pool, webhook.id, 10)
        .await
        .unwrap()
        .is_none());
    drop(batch);
    deliver_round(&db.pool, &http(), &RelayConfig::default())
        .await
        .unwrap();
    assert_eq!(hook.kinds_and_ids(), expected(&ids));
}

#[tokio::test]
async fn retention_keeps_what_a_webhook_still_has_to_take() {
    let db = with_project().await;
    let hook = Hook::default();
    add_webhook(&db, "chat", &serve(hook.clone()).await, 10).await;
    ingest(&db, 2).await;
    sqlx::query("update events_outbox set created_at = now() - interval '40 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    // Item 1 is merged (its old events may go), item 2 is still live (its timeline stays).
    sqlx::query(
        "update work_items set phase = 'merged' where id = (select min(id) from work_items)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let logs = tempfile_dir();
    let old = logs.join("1/build-1.log");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, "old").unwrap();
    let config = RetentionConfig {
        age: Duration::from_secs(30 * 86_400),
        interval: Duration::from_secs(3600),
        logs_dir: logs.clone(),
    };
    // Whatever this process is configured with, the webhook has not taken them yet.
    let (pruned, files) = prune_once(&db.pool, &config).await.unwrap();
    assert_eq!(pruned.events, 0, "nothing undelivered is pruned");
    assert_eq!(files, 0, "a fresh log file stays");
    deliver_round(&db.pool, &http(), &RelayConfig::default())
        .await
        .unwrap();
    let (pruned, _) = prune_once(&db.pool, &config).await.unwrap();
    assert_eq!(pruned.events, 1);
    assert_eq!(count(&db, "select count(*) from events_outbox").await, 1);
    let zero = RetentionConfig {
        age: Duration::ZERO,
        ..config
    };
    let (_, files) = prune_once(&db.pool, &zero).await.unwrap();
    assert_eq!(files, 1);
    assert!(!old.exists());
    std::fs::remove_dir_all(&logs).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "damascus-retention-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
