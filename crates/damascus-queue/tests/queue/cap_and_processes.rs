//! Several worker processes on one database: exactly-once, the global cap, a SIGKILL,
//! and a PostgreSQL restart under a running pool.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use damascus_db::cluster::{Durability, EmbeddedCluster};
use damascus_queue::WorkerPool;

use crate::support::{
    count, database, fast_config, items, runner, wait_for, ProcessSpec, Script, WorkerProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_items_through_two_processes_each_step_exactly_once() {
    let db = database().await;
    let ids = items(&db.pool, 1000, 3, 10).await;
    let spec = ProcessSpec {
        concurrency: 8,
        lease: Duration::from_secs(10),
        script: Script::Pass,
        work: Duration::ZERO,
    };
    let a = WorkerProcess::spawn(&db, &spec);
    let b = WorkerProcess::spawn(&db, &spec);
    wait_for(
        &db.pool,
        "select count(*) from work_items where phase = 'merged'",
        1000,
        Duration::from_secs(180),
    )
    .await;
    a.stop();
    b.stop();
    assert_eq!(ids.len(), 1000);
    // Each item ran each phase once: no run doubled, none missed.
    assert_eq!(
        count(&db.pool, "select count(*) from test_runs").await,
        3000
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(distinct (item_id, phase)) from test_runs"
        )
        .await,
        3000
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from events_outbox where kind = 'item.phase_changed'"
        )
        .await,
        3000
    );
    assert_eq!(
        count(&db.pool, "select count(distinct pid) from test_runs").await,
        2,
        "both processes worked"
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from mq_msgs where id != uuid_nil()"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_worker_processes").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_never_run_more_than_the_global_cap() {
    let db = database().await;
    items(&db.pool, 24, 3, 10).await;
    let spec = ProcessSpec {
        concurrency: 4,
        lease: Duration::from_secs(10),
        script: Script::Pass,
        work: Duration::from_millis(150),
    };
    let processes: Vec<WorkerProcess> = (0..3).map(|_| WorkerProcess::spawn(&db, &spec)).collect();
    let mut max_held = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count(
        &db.pool,
        "select count(*) from work_items where phase = 'merged'",
    )
    .await
        < 24
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "items did not all merge"
        );
        let held = count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null and lease_until >= now()",
        )
        .await;
        max_held = max_held.max(held);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for process in processes {
        process.stop();
    }
    assert!(max_held <= 4, "sampled {max_held} held slots");
    // From the runs' own clocks: the most phases running at one instant.
    let overlap = count(
        &db.pool,
        "select max(running)::int8 from (
            select sum(delta) over (order by at, delta) as running from (
                select started_at as at, 1 as delta from test_runs
                union all select ended_at, -1 from test_runs) edges) timeline",
    )
    .await;
    assert!(overlap <= 4, "{overlap} phases ran at once");
    assert!(
        overlap >= 2,
        "the cap was never used ({overlap}); the test proves nothing"
    );
    assert_eq!(
        count(&db.pool, "select count(distinct pid) from test_runs").await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_its_claim_and_the_job_completes_elsewhere() {
    let db = database().await;
    let ids = items(&db.pool, 1, 3, 10).await;
    let spec = ProcessSpec {
        concurrency: 2,
        lease: Duration::from_millis(1500),
        script: Script::HangFirstRun,
        work: Duration::ZERO,
    };
    let doomed = WorkerProcess::spawn(&db, &spec);
    wait_for(
        &db.pool,
        "select count(*) from test_runs",
        1,
        Duration::from_secs(20),
    )
    .await;
    doomed.kill();
    let survivor = WorkerProcess::spawn(&db, &spec);
    wait_for(
        &db.pool,
        "select count(*) from work_items where phase = 'merged'",
        1,
        Duration::from_secs(60),
    )
    .await;
    survivor.stop();
    // The spec job ran twice (once hung in the killed process), every step was
    // recorded once.
    let spec_runs = count(
        &db.pool,
        &format!(
            "select count(*) from test_runs where item_id = {} and phase = 'spec'",
            ids[0]
        ),
    )
    .await;
    assert_eq!(spec_runs, 2);
    assert_eq!(
        count(
            &db.pool,
            "select count(distinct pid) from test_runs where phase = 'spec'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from events_outbox where kind = 'item.phase_changed'"
        )
        .await,
        3
    );
}

/// A private cluster (the shared test cluster must not restart under other tests) is
/// restarted while a pool works; the pool reconnects, listens again and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_survives_a_postgres_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cluster = EmbeddedCluster::new(&dir.path().join("data"), Durability::Ephemeral).unwrap();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.ensure_running())
        .await
        .unwrap()
        .unwrap();
    damascus_db::connect::create_database_if_missing(&cluster.layout.url("postgres"), "restart")
        .await
        .unwrap();
    let url = cluster.layout.url("restart");
    // The product's pool options: it must reconnect with them.
    let pool = damascus_db::connect::pool_options(damascus_db::connect::PoolSettings {
        max_connections: 8,
        ..Default::default()
    })
    .connect(&url)
    .await
    .unwrap();
    damascus_db::migrate::apply(&pool).await.unwrap();
    sqlx::query(
        "create table test_runs (id bigint generated always as identity primary key, item_id bigint not null,
         phase text not null, attempt int not null, job_id uuid not null, pid int not null,
         started_at timestamptz not null default clock_timestamp(), ended_at timestamptz)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git')")
        .execute(&pool)
        .await
        .unwrap();
    items(&pool, 20, 3, 10).await;
    let mut config = fast_config(4);
    config.lease = Duration::from_secs(5);
    config.poll_interval = Duration::from_secs(30);
    let workers = WorkerPool::start(
        pool.clone(),
        config,
        runner(Script::Pass, Duration::from_millis(50)),
    )
    .await
    .unwrap();
    wait_for(
        &pool,
        "select count(*) from test_runs",
        4,
        Duration::from_secs(20),
    )
    .await;

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.stop().unwrap();
        c.ensure_running().unwrap();
    })
    .await
    .unwrap();
    // New work after the restart arrives by NOTIFY on the re-established LISTEN.
    items(&pool, 5, 3, 10).await;
    wait_for(
        &pool,
        "select count(*) from work_items where phase = 'merged'",
        25,
        Duration::from_secs(90),
    )
    .await;
    workers.shutdown().await;
    // Runs cut by the restart were retried; every step was still recorded exactly once.
    assert_eq!(
        count(
            &pool,
            "select count(*) from events_outbox where kind = 'item.phase_changed'"
        )
        .await,
        75
    );
    pool.close().await;
    cluster.stop().unwrap();
}
