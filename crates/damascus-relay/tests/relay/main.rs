//! The outbox relay against a webhook server inside the test, and retention, on a real
//! database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use damascus_relay::{deliver_batch, prune_once, RelayConfig, RetentionConfig};
use damascus_testdb::TestDatabase;
use serde_json::Value;

#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<(String, Value)>>>,
    fail: Arc<Mutex<bool>>,
    requests: Arc<Mutex<u32>>,
}

async fn serve(hook: Hook) -> String {
    let app = Router::new().route(
        "/hooks/secret-token",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let hook = hook.clone();
            async move {
                *hook.requests.lock().unwrap() += 1;
                if *hook.fail.lock().unwrap() {
                    return StatusCode::BAD_GATEWAY;
                }
                let kind = headers["x-damascus-event"].to_str().unwrap().to_owned();
                hook.received.lock().unwrap().push((kind, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks/secret-token")
}

async fn with_events(n: i64) -> TestDatabase {
    let db = TestDatabase::new().await;
    sqlx::query("insert into projects (name, repository) values ('web', '/x')")
        .execute(&db.pool)
        .await
        .unwrap();
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
    db
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn events_are_delivered_once_each_with_their_kind() {
    let db = with_events(3).await;
    let hook = Hook::default();
    let url = serve(hook.clone()).await;
    let http = reqwest::Client::new();
    let config = RelayConfig::new(vec![url]);
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 3);
    assert_eq!(
        deliver_batch(&db.pool, &http, &config).await.unwrap(),
        0,
        "nothing is sent twice"
    );
    let received = hook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    assert!(received
        .iter()
        .all(|(kind, body)| kind == "item.ingested" && body["kind"] == "item.ingested"));
    assert_eq!(
        count(
            &db,
            "select count(*) from events_outbox where delivered_at is null"
        )
        .await,
        0
    );
}

/// A webhook that is down costs a batch one try, not one per event: the batch stops at
/// the first failure, and the other events stay pending, untouched.
#[tokio::test]
async fn a_failing_webhook_stops_the_batch_at_its_first_failure() {
    let db = with_events(3).await;
    let hook = Hook::default();
    *hook.fail.lock().unwrap() = true;
    let url = serve(hook.clone()).await;
    let http = reqwest::Client::new();
    let config = RelayConfig::new(vec![url]);
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 1);
    assert_eq!(*hook.requests.lock().unwrap(), 1);
    assert_eq!(
        count(
            &db,
            "select count(*) from events_outbox where delivery_attempts = 0 and delivered_at is null"
        )
        .await,
        2
    );
    // Back up: the rest go out with the next batch.
    *hook.fail.lock().unwrap() = false;
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 2);
    assert_eq!(hook.received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn failures_back_off_then_park_the_event_as_dead() {
    let db = with_events(1).await;
    let hook = Hook::default();
    *hook.fail.lock().unwrap() = true;
    let url = serve(hook.clone()).await;
    let http = reqwest::Client::new();
    let mut config = RelayConfig::new(vec![url]);
    config.max_attempts = 2;
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 1);
    let (attempts, error, later): (i32, String, bool) = sqlx::query_as(
        "select delivery_attempts, last_delivery_error, next_delivery_at > now() from events_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert!(later, "the retry waits out its backoff");
    assert!(
        error.contains("502") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert!(
        !error.contains("secret-token"),
        "a webhook's path never reaches the database: {error}"
    );
    // Not due yet: the next batch skips it.
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 0);
    sqlx::query("update events_outbox set next_delivery_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 1);
    assert_eq!(
        count(
            &db,
            "select count(*) from events_outbox where dead_at is not null and delivered_at is null"
        )
        .await,
        1
    );
    sqlx::query("update events_outbox set next_delivery_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        deliver_batch(&db.pool, &http, &config).await.unwrap(),
        0,
        "dead events are not retried"
    );
}

async fn make_events_due(db: &TestDatabase) {
    sqlx::query("update events_outbox set next_delivery_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// With two webhooks and one of them down, the other gets each event once: a retry
/// goes only to the webhooks that have not taken the event yet.
#[tokio::test]
async fn a_retry_skips_the_webhooks_that_already_took_the_event() {
    let db = with_events(1).await;
    let (up, down) = (Hook::default(), Hook::default());
    *down.fail.lock().unwrap() = true;
    let up_url = serve(up.clone()).await;
    let down_url = serve(down.clone()).await;
    let http = reqwest::Client::new();
    let config = RelayConfig::new(vec![up_url.clone(), down_url]);
    for _ in 0..2 {
        assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 1);
        make_events_due(&db).await;
    }
    assert_eq!(
        *up.requests.lock().unwrap(),
        1,
        "the webhook that took it is skipped"
    );
    assert_eq!(*down.requests.lock().unwrap(), 2);
    let kept: Vec<String> = sqlx::query_scalar("select webhook from event_webhook_deliveries")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept, vec![damascus_db::outbox::webhook_key(&up_url)]);
    assert!(
        !kept[0].contains("secret-token") && kept[0].len() == 32,
        "a webhook is kept under a key, not its URL: {}",
        kept[0]
    );
    // Back up: only the missing webhook gets it, and the event is delivered.
    *down.fail.lock().unwrap() = false;
    assert_eq!(deliver_batch(&db.pool, &http, &config).await.unwrap(), 1);
    assert_eq!(up.received.lock().unwrap().len(), 1);
    assert_eq!(down.received.lock().unwrap().len(), 1);
    assert_eq!(
        count(
            &db,
            "select count(*) from events_outbox where delivered_at is not null"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "select count(*) from event_webhook_deliveries").await,
        0,
        "per-webhook records go once every webhook has the event"
    );
}

#[tokio::test]
async fn retention_prunes_old_finished_things_and_keeps_live_ones() {
    let db = with_events(2).await;
    sqlx::query(
        "update events_outbox set delivered_at = now(), created_at = now() - interval '40 days'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Item 1 is merged (its old events go), item 2 is still live (its timeline stays).
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
        relay_enabled: true,
    };
    let (pruned, files) = prune_once(&db.pool, &config).await.unwrap();
    assert_eq!(pruned.events, 1);
    assert_eq!(files, 0, "a fresh log file stays");
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
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
