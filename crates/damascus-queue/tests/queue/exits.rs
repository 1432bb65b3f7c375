//! Every way a run can end: a phase that panics runs again; a cancel stops the work of
//! its item, also a job spawned and claimed in the same instant; a run stopped without
//! a report (cancel, shutdown) records what it reserved as spend; a pause lets no
//! phase start after it commits.

use std::sync::Arc;
use std::time::Duration;

use damascus_core::Verdict;
use damascus_db::budget::{self, Reservation};
use damascus_db::jobs;
use damascus_db::operator;
use damascus_queue::{run_until_idle, JobContext, PhaseFuture, PhaseRunner, WorkerPool};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::support::{
    backend_pid, count, database, fast_config, items, test_worker, wait_until,
    wait_until_blocked_by,
};

/// Panics on the first run of `panicking`'s item; every other run passes at once.
struct PanicsOnce {
    panicking: i64,
}

impl PhaseRunner for PanicsOnce {
    fn run(&self, job: JobContext) -> PhaseFuture {
        let panicking = self.panicking;
        Box::pin(async move {
            let earlier: i64 =
                sqlx::query_scalar("select count(*) from test_runs where item_id = $1")
                    .bind(job.item_id)
                    .fetch_one(&job.pool)
                    .await
                    .unwrap();
            sqlx::query(
                "insert into test_runs (item_id, phase, attempt, job_id, pid) values ($1, $2, $3, $4, 0)",
            )
            .bind(job.item_id)
            .bind(job.phase.as_str())
            .bind(job.attempt)
            .bind(job.job_id)
            .execute(&job.pool)
            .await
            .unwrap();
            if job.item_id == panicking && earlier == 0 {
                let granted = budget::reserve(&job.pool, job.claim, job.item_id)
                    .await
                    .unwrap();
                assert_eq!(granted, Reservation::Granted(2.5));
                panic!("the runner tripped over item {panicking}");
            }
            Verdict::pass().into()
        })
    }
}

#[tokio::test]
async fn a_phase_that_panics_runs_again_and_the_pool_keeps_working() {
    let db = database().await;
    set_daily_budget(&db.pool, 2.5).await;
    let ids = items(&db.pool, 3, 3, 10).await;
    let runner = Arc::new(PanicsOnce { panicking: ids[0] });
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        run_until_idle(db.pool.clone(), fast_config(2), runner),
    )
    .await
    .expect("the pool went idle")
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        3,
        "every item, the panicking one too, merged"
    );
    assert_eq!(summary.retries_scheduled, 1, "{summary:?}");
    // The panicking item's spec ran twice; the others' phases once each.
    let runs: Vec<(i64, String, i64)> = sqlx::query_as(
        "select item_id, phase, count(*) from test_runs group by 1, 2 order by 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (item, phase, n) in &runs {
        let want = if *item == ids[0] && phase == "spec" {
            2
        } else {
            1
        };
        assert_eq!(*n, want, "runs of item {item} in {phase}: {runs:?}");
    }
    // The retry is recorded with the panic's message, and the run was counted.
    let (reason, left): (String, i32) = sqlx::query_as(
        "select payload->>'reason', (payload->>'attempts_left')::int from events_outbox
         where item_id = $1 and kind = 'job.retry_scheduled'",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        reason.contains("panicked") && reason.contains("tripped over"),
        "{reason}"
    );
    assert_eq!(
        left, 4,
        "the panicked run counts as one of the job's 5 runs"
    );
    // What the panicked run reserved is recorded as spent.
    let spent = unknown_spend(&db.pool, ids[0]).await;
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0].0, 2.5);
    assert!(spent[0].1.contains("panicked"), "{spent:?}");
}

/// A claim lost with its worker (its lease ran out, another claim took the job): its
/// reservation keeps counting against the cap until the reaper records it as spent.
#[tokio::test]
async fn a_lost_claims_reservation_counts_until_the_reaper_records_it() {
    let db = database().await;
    set_daily_budget(&db.pool, 3.0).await;
    let ids = items(&db.pool, 2, 3, 10).await;
    let dead = test_worker(&db.pool, 1, 4).await;
    let claimed = jobs::claim(&db.pool, dead, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let lost = &claimed[0];
    let item = lost.target.unwrap().item_id;
    let other = if item == ids[0] { ids[1] } else { ids[0] };
    assert_eq!(
        budget::reserve(&db.pool, lost.claim, item).await.unwrap(),
        Reservation::Granted(3.0)
    );
    // The worker dies: its lease runs out and another worker takes the job.
    sqlx::query("update damascus_slots set lease_until = now() - interval '1 second' where claim_token = $1")
        .bind(lost.claim)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update damascus_jobs set run_at = now() - interval '1 second' where job_id = $1")
        .bind(lost.job_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let live = test_worker(&db.pool, 2, 4).await;
    let again = jobs::claim(&db.pool, live, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
    let other_claim = again
        .iter()
        .find(|j| j.target.unwrap().item_id == other)
        .unwrap()
        .claim;
    // Not settled yet: it still holds the whole cap.
    assert!(matches!(
        budget::reserve(&db.pool, other_claim, other).await.unwrap(),
        Reservation::Held { .. }
    ));
    let reaped = jobs::reap(&db.pool).await.unwrap();
    assert_eq!(reaped.unreported_reservations, 1, "{reaped:?}");
    let spent = unknown_spend(&db.pool, item).await;
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0].0, 3.0);
    assert!(spent[0].1.contains("claim was lost"), "{spent:?}");
    assert_eq!(
        budget::reserve(&db.pool, other_claim, other).await.unwrap(),
        Reservation::ProjectSpent { left: 0.0 }
    );
}

/// The database keeps a finished item jobless: the move to cancelled (typed into psql)
/// deletes its job and frees its slot, and a job row for it is refused.
#[tokio::test]
async fn a_finished_item_has_no_job() {
    let db = database().await;
    let ids = items(&db.pool, 1, 3, 10).await;
    let worker = test_worker(&db.pool, 1, 4).await;
    jobs::claim(&db.pool, worker, 1, Duration::from_secs(30))
        .await
        .unwrap();
    sqlx::query("update work_items set phase = 'cancelled' where id = $1")
        .bind(ids[0])
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_jobs").await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null"
        )
        .await,
        0
    );
    let refused = sqlx::query(
        "insert into damascus_jobs (item_id, phase, attempt, max_runs) values ($1, 'spec', 1, 5)",
    )
    .bind(ids[0])
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("a finished item gets no job"),
        "{refused}"
    );
}

/// A run that reserves budget under its claim, records it, and then waits until it is
/// stopped; with `sleeper`, it waits in a `sleep` process group of its own, killed when
/// the run is stopped (as the loops kill an agent).
struct ReservesThenWaits {
    sleeper: bool,
    /// Item whose spec phase waits for `release` before it passes (the others pass at
    /// once in spec); every build reserves, then waits.
    held_spec: Option<(i64, Arc<Notify>)>,
}

impl PhaseRunner for ReservesThenWaits {
    fn run(&self, job: JobContext) -> PhaseFuture {
        let sleeper = self.sleeper;
        let held = self.held_spec.clone();
        Box::pin(async move {
            if job.phase == damascus_core::Phase::Spec {
                if let Some((item, release)) = held {
                    if item == job.item_id {
                        release.notified().await;
                    }
                }
                return Verdict::pass().into();
            }
            let granted = budget::reserve(&job.pool, job.claim, job.item_id)
                .await
                .unwrap();
            sqlx::query("insert into test_reserved (item_id, granted) values ($1, $2)")
                .bind(job.item_id)
                .bind(format!("{granted:?}"))
                .execute(&job.pool)
                .await
                .unwrap();
            if !sleeper {
                // Until the pool stops it (and drops this future).
                std::future::pending::<()>().await;
            }
            let mut child = tokio::process::Command::new("sleep")
                .arg("300")
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let pid = child.id().unwrap() as i32;
            sqlx::query("insert into test_processes (item_id, pid) values ($1, $2)")
                .bind(job.item_id)
                .bind(pid)
                .execute(&job.pool)
                .await
                .unwrap();
            tokio::select! {
                _ = child.wait() => {}
                _ = job.cancel.cancelled() => {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = child.wait().await;
                    // Stopped: the pool drops this future.
                    std::future::pending::<()>().await;
                }
            }
            Verdict::pass().into()
        })
    }
}

async fn exit_tables(pool: &PgPool) {
    for table in [
        "create table test_reserved (item_id bigint not null, granted text not null)",
        "create table test_processes (item_id bigint not null, pid int not null)",
    ] {
        sqlx::query(table).execute(pool).await.unwrap();
    }
}

/// Whether process `pid` is gone (or a zombie nobody waited for yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The ledger rows of an item that say their spend is unknown, as (usd, model).
async fn unknown_spend(pool: &PgPool, item: i64) -> Vec<(f64, String)> {
    sqlx::query_as(
        "select usd::float8, model from cost_ledger where item_id = $1 and model like '%spend unknown%'",
    )
    .bind(item)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn set_daily_budget(pool: &PgPool, usd: f64) {
    sqlx::query("update projects set daily_cost_budget_usd = $1 where name = 'web'")
        .bind(usd)
        .execute(pool)
        .await
        .unwrap();
}

/// A run that reserved budget and is cancelled leaves a "spend unknown" ledger row with
/// what it reserved, its agent process dies within seconds, and the project's daily
/// cap counts the reservation as spent.
#[tokio::test]
async fn a_cancelled_run_records_what_it_reserved_and_its_process_dies() {
    let db = database().await;
    exit_tables(&db.pool).await;
    set_daily_budget(&db.pool, 10.0).await;
    let ids = items(&db.pool, 1, 3, 10).await;
    let runner = Arc::new(ReservesThenWaits {
        sleeper: true,
        held_spec: None,
    });
    let pool = WorkerPool::start(db.pool.clone(), fast_config(2), runner)
        .await
        .unwrap();
    wait_until(
        &db.pool,
        "select exists (select 1 from test_processes)",
        "the build's process to start",
        Duration::from_secs(20),
    )
    .await;
    let pid: i32 = sqlx::query_scalar("select pid from test_processes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let granted: String = sqlx::query_scalar("select granted from test_reserved")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(granted, "Granted(10.0)");
    operator::cancel(&db.pool, ids[0], "test").await.unwrap();
    assert_eq!(
        unknown_spend(&db.pool, ids[0])
            .await
            .iter()
            .map(|(usd, _)| *usd)
            .collect::<Vec<_>>(),
        [10.0],
        "the cancel records the reservation as spend"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled item's process {pid} still runs after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    // The daily cap counts it: nothing is left for another item today.
    let other = items(&db.pool, 1, 3, 10).await[0];
    let worker = test_worker(&db.pool, 7, 2).await;
    let claimed = jobs::claim(&db.pool, worker, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed[0].target.unwrap().item_id, other);
    assert_eq!(
        budget::reserve(&db.pool, claimed[0].claim, other)
            .await
            .unwrap(),
        Reservation::ProjectSpent { left: 0.0 }
    );
}

/// A worker shut down past its grace period releases its running job and records what
/// the run reserved, as spend unknown.
#[tokio::test]
async fn a_run_stopped_at_shutdown_records_what_it_reserved() {
    let db = database().await;
    exit_tables(&db.pool).await;
    set_daily_budget(&db.pool, 4.0).await;
    let ids = items(&db.pool, 1, 3, 10).await;
    let runner = Arc::new(ReservesThenWaits {
        sleeper: false,
        held_spec: None,
    });
    let mut config = fast_config(2);
    config.shutdown_grace = Duration::from_millis(100);
    let pool = WorkerPool::start(db.pool.clone(), config, runner)
        .await
        .unwrap();
    wait_until(
        &db.pool,
        "select exists (select 1 from test_reserved)",
        "the build to reserve",
        Duration::from_secs(20),
    )
    .await;
    let summary = pool.shutdown().await;
    assert_eq!(summary.released, 1, "{summary:?}");
    assert_eq!(
        unknown_spend(&db.pool, ids[0])
            .await
            .iter()
            .map(|(usd, _)| *usd)
            .collect::<Vec<_>>(),
        [4.0]
    );
    // Released: the job waits for the next worker, in build.
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_queue where state = 'queued' and phase = 'build'"
        )
        .await,
        1
    );
}

/// Cancel racing the end of a phase that spawns and claims the item's next job in the
/// same statement: the cancel waits for that end and then stops the new job too. Many
/// rounds, each set up through `pg_locks`.
#[tokio::test]
async fn a_cancel_racing_a_phase_end_leaves_no_job_behind() {
    let db = database().await;
    let worker = test_worker(&db.pool, 1, 4).await;
    for round in 0..30 {
        let item = items(&db.pool, 1, 3, 10).await[0];
        let claimed = jobs::claim(&db.pool, worker, 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "round {round}");
        // A blocker holds the item, so the group end waits for it holding the slot.
        let mut blocker = db.pool.begin().await.unwrap();
        let blocker_pid = backend_pid(&mut blocker).await;
        sqlx::query("select 1 from work_items where id = $1 for update")
            .bind(item)
            .execute(&mut *blocker)
            .await
            .unwrap();
        let mut end_conn = db.pool.acquire().await.unwrap();
        let end_pid = backend_pid(&mut end_conn).await;
        let ending = tokio::spawn({
            let job = claimed[0].clone();
            async move {
                let pass = Verdict::pass().into();
                let next = jobs::ClaimNext {
                    max: 1,
                    running_besides: 0,
                    lease: Duration::from_secs(30),
                };
                jobs::end_group(&mut end_conn, worker, &[(&job, &pass)], Some(next))
                    .await
                    .unwrap()
            }
        });
        wait_until_blocked_by(&db.pool, blocker_pid, Some(end_pid)).await;
        let cancelling = tokio::spawn({
            let pool = db.pool.clone();
            async move { operator::cancel(&pool, item, "test").await }
        });
        // The cancel is under way and waits for the phase's end.
        wait_until_blocked_by(&db.pool, end_pid, None).await;
        blocker.rollback().await.unwrap();
        let ended = ending.await.unwrap();
        assert_eq!(
            ended.claimed.len(),
            1,
            "round {round}: the end claimed the build"
        );
        cancelling.await.unwrap().unwrap();
        let phase: String = sqlx::query_scalar("select phase::text from work_items where id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(phase, "cancelled", "round {round}");
        assert_eq!(
            count(
                &db.pool,
                &format!("select count(*) from damascus_jobs where item_id = {item}")
            )
            .await,
            0,
            "round {round}: the build spawned in the racing instant survived the cancel"
        );
        assert_eq!(
            count(
                &db.pool,
                "select count(*) from damascus_slots where job_id is not null"
            )
            .await,
            0,
            "round {round}: a slot still holds a claim"
        );
    }
}

/// The same race with a real pool: the spec's end claims the build, whose agent
/// process starts, while the cancel waits; the process is gone within 5 s of the
/// cancel.
#[tokio::test]
async fn a_build_claimed_in_the_cancels_instant_is_stopped_within_seconds() {
    let db = database().await;
    exit_tables(&db.pool).await;
    let item = items(&db.pool, 1, 3, 10).await[0];
    let release = Arc::new(Notify::new());
    let runner = Arc::new(ReservesThenWaits {
        sleeper: true,
        held_spec: Some((item, release.clone())),
    });
    let pool = WorkerPool::start(db.pool.clone(), fast_config(2), runner)
        .await
        .unwrap();
    wait_until(
        &db.pool,
        "select exists (select 1 from damascus_queue where state = 'running' and phase = 'spec')",
        "the spec to run",
        Duration::from_secs(20),
    )
    .await;
    let mut blocker = db.pool.begin().await.unwrap();
    let blocker_pid = backend_pid(&mut blocker).await;
    sqlx::query("select 1 from work_items where id = $1 for update")
        .bind(item)
        .execute(&mut *blocker)
        .await
        .unwrap();
    release.notify_one();
    // The spec's end holds its slot and waits for the item.
    wait_until_blocked_by(&db.pool, blocker_pid, None).await;
    let end_pid: i32 = sqlx::query_scalar(&format!(
        "select pid from pg_stat_activity where datname = current_database()
          and wait_event_type = 'Lock' and {blocker_pid} = any(pg_blocking_pids(pid))"
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let cancelling = tokio::spawn({
        let pool = db.pool.clone();
        async move { operator::cancel(&pool, item, "test").await }
    });
    wait_until_blocked_by(&db.pool, end_pid, None).await;
    blocker.rollback().await.unwrap();
    cancelling.await.unwrap().unwrap();
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {item}")
        )
        .await,
        0
    );
    // Whatever build started in that instant stops within 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = sqlx::query_scalar("select pid from test_processes")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        let running: Vec<i32> = pids.into_iter().filter(|p| !process_gone(*p)).collect();
        let claimed = count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null",
        )
        .await;
        if running.is_empty() && claimed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "5 s after the cancel: processes {running:?} run, {claimed} slots held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
}

/// A pause racing a transaction that makes an item runnable: once the pause has
/// committed, no job of the project is left to start. Set up through `pg_locks`: the
/// item's transaction is open when the pause starts.
#[tokio::test]
async fn no_phase_starts_after_a_pause_commits() {
    let db = database().await;
    for round in 0..10 {
        operator::resume_project(&db.pool, "web").await.unwrap();
        // A blocked item (no job), then the transaction that unblocks it by hand, as an
        // UPDATE typed into psql would: its trigger spawns the job, not yet committed.
        let item: i64 = sqlx::query_scalar(
            "insert into work_items (project_id, title, phase, resume_phase,
                                     max_attempts_per_phase, max_attempts_total)
             select id, 'racing ' || $1, 'blocked', 'spec', 3, 10 from projects where name = 'web'
             returning id",
        )
        .bind(round)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let mut spawning = db.pool.begin().await.unwrap();
        let spawning_pid = backend_pid(&mut spawning).await;
        sqlx::query("update work_items set phase = 'spec', resume_phase = null where id = $1")
            .bind(item)
            .execute(&mut *spawning)
            .await
            .unwrap();
        assert_eq!(
            count_in(&mut spawning, item).await,
            1,
            "round {round}: the unblocking spawned the job"
        );
        let pausing = tokio::spawn({
            let pool = db.pool.clone();
            async move { operator::pause_project(&pool, "web").await }
        });
        // The pause either waits for the spawning transaction or has committed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waits: bool = sqlx::query_scalar(&format!(
                "select exists (select 1 from pg_stat_activity a
                  where a.datname = current_database() and a.wait_event_type = 'Lock'
                    and {spawning_pid} = any(pg_blocking_pids(a.pid)))"
            ))
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waits || pausing.is_finished() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "round {round}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        spawning.commit().await.unwrap();
        pausing.await.unwrap().unwrap();
        assert_eq!(
            count(
                &db.pool,
                &format!("select count(*) from damascus_jobs where item_id = {item}")
            )
            .await,
            0,
            "round {round}: the paused project kept a job that can start"
        );
    }
    let summary = run_until_idle(
        db.pool.clone(),
        fast_config(2),
        crate::support::runner(crate::support::Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(summary.claimed, 0, "a phase started in a paused project");
}

async fn count_in(conn: &mut sqlx::PgConnection, item: i64) -> i64 {
    sqlx::query_scalar("select count(*) from damascus_jobs where item_id = $1")
        .bind(item)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// One rule says whether a worker is alive: the `damascus_workers` view, the reaper
/// and the fair share agree (four of the worker's own leases).
#[tokio::test]
async fn a_worker_is_alive_by_one_rule() {
    let db = database().await;
    let quick = test_worker(&db.pool, 1, 4).await;
    let slow = test_worker(&db.pool, 2, 4).await;
    // Silent for 10 s: past four leases of 1 s, within four of 30 s.
    sqlx::query(
        "update damascus_worker_processes set heartbeat_at = now() - interval '10 seconds',
             lease_ms = case id when $1 then 1000 else 30000 end",
    )
    .bind(quick.0)
    .execute(&db.pool)
    .await
    .unwrap();
    let alive: Vec<(i64, bool)> =
        sqlx::query_as("select id, alive from damascus_workers order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(alive, [(quick.0, false), (slow.0, true)]);
    jobs::reap(&db.pool).await.unwrap();
    let left: Vec<i64> = sqlx::query_scalar("select id from damascus_worker_processes order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, [slow.0]);
}
