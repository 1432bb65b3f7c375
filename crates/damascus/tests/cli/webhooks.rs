//! The webhook relay as `damascus run` runs it: a process killed with SIGKILL in the
//! middle of a batch loses no event.

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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

    let mut second = start_run(&db, data.path());
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
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    second.wait().unwrap();
    // Repeats only for the batch that was in flight when the first process died.
    let received = got.lock().unwrap().len();
    let repeats = received - want.len();
    assert!(
        repeats <= before_restart,
        "{repeats} repeats, more than the {before_restart} delivered before the kill"
    );
}
