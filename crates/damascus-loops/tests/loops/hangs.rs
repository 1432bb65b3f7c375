//! A remote that never answers cannot hold a phase, its lock or its slot: every git
//! command has a time limit, and a command past it ends the phase with a transient
//! error (retried, then a question to a person).

use std::time::Duration;

use damascus_core::SpecMode;

use crate::support::{Setup, CLAUDE_OK, GREETING};

/// A remote that accepts connections and never says a word, holding them open.
fn silent_remote() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://127.0.0.1:{port}/acme/web.git")
}

#[tokio::test]
async fn a_remote_that_never_answers_frees_the_slot_with_a_transient_error() {
    let setup = Setup::new().await;
    let agent = setup.agent("agent.sh", &format!("cat > /dev/null\n{CLAUDE_OK}"));
    let remote = silent_remote();
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.repository = remote.clone()
        })
        .await;
    // Two runs: the second one takes the project's lock the first one held.
    sqlx::query("update damascus_queue_settings set job_attempts = 2")
        .execute(&setup.db.pool)
        .await
        .unwrap();
    let item = setup.ingest("Greeting", GREETING).await;
    let mut config = setup.loops_config(None);
    config.git_timeout = Duration::from_secs(1);
    let queue = damascus_queue::QueueConfig {
        concurrency: Some(1),
        poll_interval: Duration::from_millis(100),
        retry: damascus_queue::RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        ..damascus_queue::QueueConfig::default()
    };
    let started = tokio::time::Instant::now();
    let workers = damascus_queue::WorkerPool::start(
        setup.db.pool.clone(),
        queue,
        std::sync::Arc::new(damascus_loops::Loops::new(config).unwrap()),
    )
    .await
    .unwrap();
    // Two builds of one second each, and the queue's own moments around them.
    let deadline = started + Duration::from_secs(15);
    while setup.phase(item).await != "blocked" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the item is still in {} after {:?}",
            setup.phase(item).await,
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: i64 =
        sqlx::query_scalar("select count(*) from damascus_slots where job_id is not null")
            .fetch_one(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(held, 0, "a slot is still held");
    let summary = workers.shutdown().await;
    assert_eq!(summary.claimed, 3, "{summary}");
    assert_eq!(summary.exhausted, 1, "{summary}");
    assert_eq!(summary.lost_claims, 0, "{summary}");

    let retried: Vec<String> = sqlx::query_scalar(
        "select payload->>'reason' from events_outbox where item_id = $1 and kind = 'job.retry_scheduled'",
    )
    .bind(item)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    for reason in [&retried[0], &setup.open_question(item).await.1] {
        assert!(
            reason.contains("cannot fetch the project's repository: git clone")
                && reason.contains("did not finish within 1s")
                && reason.contains("check that the remote is reachable"),
            "{reason}"
        );
    }
}
