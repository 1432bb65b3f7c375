//! Several worker processes on one database: exactly-once, the global cap, a SIGKILL,
//! and a PostgreSQL restart under a running pool.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use damascus_db::cluster::{Durability, EmbeddedCluster};
use damascus_queue::WorkerPool;

use crate::support::{
    count, database, fast_config, items, listener_backend, observer, runner, wait_for,
    wait_for_at_least, wait_until_listening_and_idle, warm, ProcessSpec, Script, WorkerProcess,
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
        count(&db.pool, "select count(*) from damascus_jobs").await,
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
    // Sampled: never more than the cap held, and the cap full at some moment.
    assert!(max_held <= 4, "sampled {max_held} held slots");
    assert_eq!(
        max_held, 4,
        "the cap was never seen full (at most {max_held})"
    );
    // From the runs' own clocks, every run counted: the most phases running at one
    // instant, and the most running at one instant in more than one process.
    let (overlap, shared_overlap): (i64, i64) = sqlx::query_as(
        "select max(running), coalesce(max(running) filter (where processes > 1), 0)
         from (select count(*) as running, count(distinct other.pid) as processes
               from test_runs r join test_runs other
                 on other.started_at <= r.started_at and other.ended_at > r.started_at
               group by r.id) at_each_start",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from test_runs where ended_at is null"
        )
        .await,
        0,
        "a run has no end; the overlap below would miss it"
    );
    assert!(overlap <= 4, "{overlap} phases ran at once");
    assert_eq!(
        overlap, 4,
        "the cap was never reached; the test proves nothing"
    );
    assert_eq!(
        shared_overlap, 4,
        "the cap was never full while two processes ran: it was not shown to be global"
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
/// restarted while a pool works; the pool reconnects, finishes the work the restart
/// cut, listens again (a new LISTEN session on the new server) and, idle, is woken by
/// NOTIFY for new work: its poll is ten minutes away.
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
        max_connections: 16,
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
    // The safety-net poll never comes round during this test (every wait below is far
    // shorter): work found after the restart was found by claims that failed and were
    // retried, by the listener's poke after it reconnected, or by NOTIFY on the new LISTEN.
    config.poll_interval = Duration::from_secs(600);
    // No reaper round in the way of what `pg_stat_activity` shows of the pool.
    config.reap_interval = Duration::from_secs(600);
    let workers = WorkerPool::start(
        pool.clone(),
        config,
        runner(Script::Pass, Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let watch = observer(&url).await;
    let listener_before = listener_backend(&watch).await;
    let server_started_before = server_started(&watch).await;
    watch.close().await;
    wait_for_at_least(
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
    // Open the connections the restart closed, so that the pool's last claim stays
    // visible below. From here the test reads through an observer of its own: its
    // queries on the worker pool's connections would hide that claim.
    warm(&pool, 12).await;
    let watch = observer(&url).await;
    assert!(
        count(
            &watch,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await
            < 20,
        "all the work was done before the connections were opened again"
    );
    assert!(
        server_started(&watch).await > server_started_before,
        "the server did not restart"
    );
    // The work cut by the restart (a claim, a run or an end that failed) is retried
    // on the new server: no poll, no NOTIFY needed.
    wait_for(
        &watch,
        "select count(*) from work_items where phase = 'merged'",
        20,
        Duration::from_secs(90),
    )
    .await;
    assert!(
        count(
            &watch,
            "select count(*) from test_runs where started_at > pg_postmaster_start_time()"
        )
        .await
            > 0,
        "all the work was done before the restart; the test proves nothing"
    );
    // The listener connected and LISTENed again, and the pool has gone idle: it
    // claimed once more after its last item merged and after the new LISTEN.
    wait_until_listening_and_idle(&watch, "(select max(updated_at) from work_items)").await;
    let listener_after = listener_backend(&watch).await;
    assert_ne!(
        listener_after, listener_before,
        "the LISTEN session is not new"
    );
    // New work for an idle pool is found only through the re-established LISTEN.
    items(&pool, 5, 3, 10).await;
    wait_for(
        &pool,
        "select count(*) from work_items where phase = 'merged'",
        25,
        Duration::from_secs(30),
    )
    .await;
    watch.close().await;
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

/// When the server behind `pool` started, in seconds since the epoch.
async fn server_started(pool: &sqlx::PgPool) -> f64 {
    sqlx::query_scalar("select extract(epoch from pg_postmaster_start_time())::float8")
        .fetch_one(pool)
        .await
        .unwrap()
}
