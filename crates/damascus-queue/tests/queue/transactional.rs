//! Jobs are part of the transaction that makes an item runnable, and any committed
//! change that makes an item runnable wakes a worker.

use std::time::Duration;

use damascus_queue::WorkerPool;
use sqlx::{Connection, PgConnection};

use crate::support::{
    count, database, fast_config, items, observer, runner, wait_for, wait_until_listening_and_idle,
    warm_pool, Script,
};

const JOBS: &str = "select count(*) from damascus_jobs";

#[tokio::test]
async fn a_rolled_back_change_leaves_no_job_and_a_committed_one_exactly_one() {
    let db = database().await;
    let insert =
        "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total)
                  select id, 'story', 3, 10 from projects where name = 'web' returning id";
    let mut tx = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&db.pool, JOBS).await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Not visible to anyone before the commit.
    assert_eq!(count(&db.pool, JOBS).await, 0);
    tx.commit().await.unwrap();
    assert_eq!(count(&db.pool, JOBS).await, 1);
    let job: (i64, String, i32) =
        sqlx::query_as("select item_id, phase::text, attempt from damascus_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(job, (id, "spec".into(), 1));

    // More updates of a runnable item never add a second job.
    for _ in 0..3 {
        sqlx::query("update work_items set title = title || '!' where id = $1")
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(count(&db.pool, JOBS).await, 1);
    // Items that are not in a working phase get none.
    sqlx::query(
        "insert into work_items (project_id, title, phase, resume_phase, max_attempts_per_phase, max_attempts_total)
         select id, 'waiting', 'blocked', 'build', 3, 10 from projects",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(count(&db.pool, JOBS).await, 1);
}

/// A person unblocks an item from psql; an idle worker whose safety-net poll is a
/// minute away picks it up, so the wake-up came from NOTIFY.
#[tokio::test]
async fn an_update_typed_into_psql_wakes_an_idle_worker() {
    let db = database().await;
    let id: i64 = sqlx::query_scalar(
        "insert into work_items (project_id, title, phase, resume_phase, max_attempts_per_phase, max_attempts_total)
         select id, 'waiting', 'blocked', 'build', 3, 10 from projects returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut config = fast_config(2);
    config.poll_interval = Duration::from_secs(60);
    config.reap_interval = Duration::from_secs(60);
    // Keep-alives (every lease/3) stay out of the way of what `pg_stat_activity` shows.
    config.lease = Duration::from_secs(30);
    // The pickup must come well before the poll could: this wait is the test's check.
    let pickup_limit = Duration::from_secs(5);
    assert!(pickup_limit * 2 < config.poll_interval);
    let pool = warm_pool(&db.url).await;
    let workers = WorkerPool::start(
        pool.clone(),
        config,
        runner(Script::NeedsHuman, Duration::ZERO),
    )
    .await
    .unwrap();
    // The pool has registered its LISTEN and claimed once after it (the listener's poke
    // on connecting), finding nothing: only a wake-up makes it claim again before the poll.
    let watch = observer(&db.url).await;
    wait_until_listening_and_idle(&watch, "'-infinity'").await;
    watch.close().await;

    let mut psql = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("update work_items set phase = 'build', resume_phase = null where id = $1")
        .bind(id)
        .execute(&mut psql)
        .await
        .unwrap();
    wait_for(&db.pool, "select count(*) from test_runs", 1, pickup_limit).await;
    workers.shutdown().await;
    pool.close().await;
    let run: (i64, String) = sqlx::query_as("select item_id, phase from test_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(run, (id, "build".into()));
}

#[tokio::test]
async fn items_ingested_in_bulk_each_get_one_job() {
    let db = database().await;
    let ids = items(&db.pool, 500, 3, 10).await;
    assert_eq!(ids.len(), 500);
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_jobs").await,
        500
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(distinct item_id) from damascus_jobs"
        )
        .await,
        500
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_queue where state = 'queued'"
        )
        .await,
        500
    );
}
