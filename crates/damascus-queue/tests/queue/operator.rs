//! Operator controls on the queue: pause and resume a project, retry a blocked item.

use std::time::Duration;

use damascus_db::operator;
use damascus_queue::run_until_idle;

use crate::support::{count, database, fast_config, items, runner, Script};

const JOBS: &str = "select count(*) from damascus_jobs";

#[tokio::test]
async fn a_paused_project_gets_no_jobs_until_it_resumes() {
    let db = database().await;
    items(&db.pool, 3, 3, 10).await;
    assert_eq!(count(&db.pool, JOBS).await, 3);
    assert_eq!(operator::pause_project(&db.pool, "web").await.unwrap(), 3);
    assert_eq!(count(&db.pool, JOBS).await, 0);
    // Items ingested while paused wait too, and a cycle runs nothing.
    items(&db.pool, 1, 3, 10).await;
    assert_eq!(count(&db.pool, JOBS).await, 0);
    let summary = run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(summary.claimed, 0);
    assert_eq!(operator::resume_project(&db.pool, "web").await.unwrap(), 4);
    assert_eq!(count(&db.pool, JOBS).await, 4);
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        4
    );
    let kinds: Vec<String> =
        sqlx::query_scalar("select kind from events_outbox where item_id is null order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["project.paused", "project.resumed"]);
    let err = operator::pause_project(&db.pool, "ghost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("project \"ghost\" not found"));
}

#[tokio::test]
async fn retry_gives_a_blocked_item_a_fresh_budget() {
    let db = database().await;
    let ids = items(&db.pool, 1, 2, 10).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(1),
        runner(Script::Fail, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'blocked'"
        )
        .await,
        1
    );
    let err = operator::retry(&db.pool, 999, "test").await.unwrap_err();
    assert!(err.to_string().contains("work item 999 not found"));
    assert_eq!(
        operator::retry(&db.pool, ids[0], "test").await.unwrap(),
        damascus_core::Phase::Spec
    );
    let (phase, attempts): (String, i32) =
        sqlx::query_as("select phase::text, attempts_total from work_items where id = $1")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((phase.as_str(), attempts), ("spec", 0));
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from human_issues where status = 'dismissed'"
        )
        .await,
        1
    );
    assert_eq!(count(&db.pool, JOBS).await, 1);
    let again = operator::retry(&db.pool, ids[0], "test").await.unwrap_err();
    assert!(again.to_string().contains("not blocked"), "{again}");
    // Cancel, then nothing more can be done to it.
    operator::cancel(&db.pool, ids[0], "test").await.unwrap();
    assert_eq!(count(&db.pool, JOBS).await, 0);
    let twice = operator::cancel(&db.pool, ids[0], "test")
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("already cancelled"), "{twice}");
}

async fn ingest(db: &damascus_testdb::TestDatabase, title: &str, depends_on: &[i64]) -> i64 {
    let story = damascus_core::Story::new(title, "").unwrap();
    let project = damascus_core::ProjectName::parse("web").unwrap();
    damascus_db::items::ingest_with(&db.pool, &project, &story, "test", depends_on)
        .await
        .unwrap()
        .id
}

/// B depends on A: B gets no job before A merges, and gets it in A's merge
/// transaction, so the same cycle runs it without delay.
#[tokio::test]
async fn a_dependent_item_starts_when_its_dependency_merges() {
    let db = database().await;
    let a = ingest(&db, "A", &[]).await;
    let b = ingest(&db, "B", &[a]).await;
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {b}")
        )
        .await,
        0
    );
    let err = damascus_db::items::ingest_with(
        &db.pool,
        &damascus_core::ProjectName::parse("web").unwrap(),
        &damascus_core::Story::new("C", "").unwrap(),
        "test",
        &[999],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("work item 999 not found"));
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        2
    );
    let b_started_after_a_merged = count(
        &db.pool,
        &format!(
            "select count(*) from test_runs b where b.item_id = {b}
             and b.started_at < (select max(ended_at) from test_runs a where a.item_id = {a})"
        ),
    )
    .await;
    assert_eq!(b_started_after_a_merged, 0, "B ran before A was merged");
    // A dependency that is merged already opens the gate at once.
    let c = ingest(&db, "C", &[a]).await;
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {c}")
        )
        .await,
        1
    );
}

#[tokio::test]
async fn build_waits_for_the_specs_approval() {
    let db = database().await;
    sqlx::query("update projects set require_approval = true")
        .execute(&db.pool)
        .await
        .unwrap();
    let id = ingest(&db, "Needs approval", &[]).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    let phase: String = sqlx::query_scalar("select phase::text from work_items where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(phase, "build", "the spec passed; the build waits");
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_jobs").await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from test_runs where phase = 'build'"
        )
        .await,
        0
    );
    operator::approve(&db.pool, id, "reviewer").await.unwrap();
    let again = operator::approve(&db.pool, id, "reviewer")
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("waits for no approval"),
        "{again}"
    );
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        1
    );
}
