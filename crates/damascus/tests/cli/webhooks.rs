//! The webhook relay and retention as `damascus run` runs them: a process killed with
//! SIGKILL in the middle of a batch loses no event, and a process without webhooks of
//! its own prunes nothing another process's webhook still has to take.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use damascus_testdb::TestDatabase;

use crate::{ok, run, with_web_project};

/// A webhook that takes 200 ms per event and records each `webhook-id` it got.
async fn slow_webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                record.lock().unwrap().push(id);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

fn start_run(db: &TestDatabase, data: &std::path::Path) -> Child {
    start_run_with(db, data, None)
}

/// `damascus run`, with `webhooks` as its DAMASCUS_WEBHOOKS when given.
fn start_run_with(db: &TestDatabase, data: &std::path::Path, webhooks: Option<&str>) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_remove("DAMASCUS_DATA_DIR")
        .env_remove("DAMASCUS_WEBHOOKS")
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", data.to_str().unwrap()])
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--concurrency",
            "1",
        ])
        .envs(webhooks.map(|w| ("DAMASCUS_WEBHOOKS", w)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_no_event() {
    let db = with_web_project().await;
    let data = tempfile::tempdir().unwrap();
    let (url, got) = slow_webhook().await;
    ok(run(&db, &["webhook", "add", "chat", &url], ""));
    // No phase runs: the events are the stories' own.
    ok(run(&db, &["project", "pause", "web"], ""));
    for n in 0..10 {
        ok(run(
            &db,
            &["ingest", "-p", "web", "--title", &format!("Story {n}")],
            "Do it.\n",
        ));
    }
    let mut first = start_run(&db, data.path());
    let started = Instant::now();
    while got.lock().unwrap().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before_restart = got.lock().unwrap().len();

    let second = start_run(&db, data.path());
    let events: Vec<i64> = sqlx::query_scalar("select id from events_outbox order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let want: HashSet<String> = events.iter().map(|id| format!("msg_{id}")).collect();
    let started = Instant::now();
    loop {
        let have: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
        let undelivered: i64 = sqlx::query_scalar(
            "select count(*) from webhook_deliveries where state <> 'delivered'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if want.is_subset(&have) && undelivered == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after the restart, still missing {:?}",
            want.difference(&have).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(second);
    // Repeats only for the batch that was in flight when the first process died.
    let received = got.lock().unwrap().len();
    let repeats = received - want.len();
    assert!(
        repeats <= before_restart,
        "{repeats} repeats, more than the {before_restart} delivered before the kill"
    );
}

/// A webhook that is down: every delivery is answered 503.
async fn down_webhook() -> String {
    let app = Router::new().route("/hook", post(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

async fn events_of(db: &TestDatabase, items: &[i64]) -> i64 {
    sqlx::query_scalar("select count(*) from events_outbox where item_id = any($1)")
        .bind(items)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn ingest_cancelled(db: &TestDatabase, title: &str) -> i64 {
    let out = ok(run(
        db,
        &["ingest", "-p", "web", "--title", title],
        "Do it.\n",
    ));
    let id: i64 = out
        .strip_prefix("ingested item ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no item id in {out:?}"));
    ok(run(db, &["item", "cancel", &id.to_string()], ""));
    id
}

/// Process A has a webhook from DAMASCUS_WEBHOOKS that is down; process B has none.
/// B's retention prunes old events no webhook wants, and none that A's webhook has not
/// taken yet.
#[tokio::test]
async fn a_process_without_webhooks_prunes_nothing_another_still_has_to_deliver() {
    let db = with_web_project().await;
    let data = tempfile::tempdir().unwrap();
    ok(run(&db, &["project", "pause", "web"], ""));
    // Written before any webhook existed: no delivery is owed for it.
    let before = ingest_cancelled(&db, "Before the webhook");

    let url = down_webhook().await;
    let a = start_run_with(&db, data.path(), Some(&url));
    let started = Instant::now();
    while sqlx::query_scalar::<_, i64>("select count(*) from webhooks")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A never registered its webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owed = [
        ingest_cancelled(&db, "Owed one"),
        ingest_cancelled(&db, "Owed two"),
    ];
    // Everything is older than the retention period (30 days by default).
    sqlx::query("update events_outbox set created_at = now() - interval '40 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    let owed_events = events_of(&db, &owed).await;
    assert!(owed_events >= 4, "{owed_events}");
    assert!(events_of(&db, &[before]).await > 0);

    let b = start_run_with(&db, data.path(), None);
    // B's retention ran once the events no webhook wants are gone.
    let started = Instant::now();
    while events_of(&db, &[before]).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B's retention never pruned the events no webhook wants"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(b);
    assert_eq!(
        events_of(&db, &owed).await,
        owed_events,
        "events A's webhook has not taken were pruned"
    );
    let undelivered: i64 = sqlx::query_scalar(
        "select count(*) from webhook_deliveries where state in ('pending', 'retrying')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(undelivered, owed_events);
    stop(a);
}
