//! Test fixtures: a phase runner that records every run in a table, scripted verdicts,
//! items in bulk, and child worker processes.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use damascus_core::Verdict;
use damascus_queue::{JobContext, PhaseFuture, PhaseRunner, QueueConfig, RetryPolicy};
use damascus_testdb::TestDatabase;
use sqlx::PgPool;

/// What the recording runner answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Pass,
    Fail,
    Transient,
    NeedsHuman,
    /// The first run of each item hangs (until cancelled or killed); later runs pass.
    HangFirstRun,
}

impl Script {
    pub fn parse(s: &str) -> Script {
        match s {
            "pass" => Script::Pass,
            "fail" => Script::Fail,
            "transient" => Script::Transient,
            "needs_human" => Script::NeedsHuman,
            "hang_first_run" => Script::HangFirstRun,
            other => panic!("unknown script {other}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Script::Pass => "pass",
            Script::Fail => "fail",
            Script::Transient => "transient",
            Script::NeedsHuman => "needs_human",
            Script::HangFirstRun => "hang_first_run",
        }
    }
}

/// Records each run in `test_runs` (start and end on the server clock) and answers as
/// scripted after `work`.
pub struct RecordingRunner {
    pub script: Script,
    pub work: Duration,
}

impl PhaseRunner for RecordingRunner {
    fn run(&self, job: JobContext) -> PhaseFuture {
        let script = self.script;
        let work = self.work;
        Box::pin(async move {
            match record_and_answer(&job, script, work).await {
                Ok(verdict) => verdict.into(),
                // The database went away mid-phase (a restart): the queue retries.
                Err(e) => Verdict::TransientError {
                    reason: format!("test runner: {e}"),
                }
                .into(),
            }
        })
    }
}

async fn record_and_answer(
    job: &JobContext,
    script: Script,
    work: Duration,
) -> Result<Verdict, sqlx::Error> {
    let run_id: i64 = sqlx::query_scalar(
        "insert into test_runs (item_id, phase, attempt, job_id, pid) values ($1, $2, $3, $4, $5) returning id",
    )
    .bind(job.item_id)
    .bind(job.phase.as_str())
    .bind(job.attempt)
    .bind(job.job_id)
    .bind(std::process::id() as i32)
    .fetch_one(&job.pool)
    .await?;
    let earlier: i64 =
        sqlx::query_scalar("select count(*) from test_runs where item_id = $1 and id < $2")
            .bind(job.item_id)
            .bind(run_id)
            .fetch_one(&job.pool)
            .await?;
    if script == Script::HangFirstRun && earlier == 0 {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(work).await;
    sqlx::query("update test_runs set ended_at = clock_timestamp() where id = $1")
        .bind(run_id)
        .execute(&job.pool)
        .await?;
    Ok(match script {
        Script::Pass | Script::HangFirstRun => Verdict::pass(),
        Script::Fail => Verdict::Fail {
            reason: "tests failed".into(),
            log_tail: "assertion failed".into(),
        },
        Script::Transient => Verdict::TransientError {
            reason: "forge answered 503".into(),
        },
        Script::NeedsHuman => Verdict::NeedsHuman {
            question: "Which database should this use?".into(),
            context: "the story does not say".into(),
        },
    })
}

pub fn runner(script: Script, work: Duration) -> Arc<dyn PhaseRunner> {
    Arc::new(RecordingRunner { script, work })
}

/// Short timings so tests finish quickly.
pub fn fast_config(concurrency: u32) -> QueueConfig {
    QueueConfig {
        concurrency: Some(concurrency),
        lease: Duration::from_secs(3),
        poll_interval: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(5),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        reap_interval: Duration::from_millis(300),
    }
}

/// A migrated database with the `test_runs` table and a project named `web`.
pub async fn database() -> TestDatabase {
    let db = TestDatabase::new().await;
    sqlx::query(
        "create table test_runs (
            id bigint generated always as identity primary key,
            item_id bigint not null, phase text not null, attempt int not null, job_id uuid not null,
            pid int not null, started_at timestamptz not null default clock_timestamp(), ended_at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git')")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

/// Inserts `n` items in phase `phase`; the spawn trigger gives each its job.
pub async fn items(pool: &PgPool, n: i64, per_phase: i32, total: i32) -> Vec<i64> {
    sqlx::query_scalar(
        "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total)
         select p.id, 'item ' || g, $2, $3 from projects p, generate_series(1, $1) g where p.name = 'web'
         returning id",
    )
    .bind(n)
    .bind(per_phase)
    .bind(total)
    .fetch_all(pool)
    .await
    .unwrap()
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls `sql` (a count) until it equals `want`, for at most `limit`.
pub async fn wait_for(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = count(pool, sql).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for `{sql}` = {want}, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `sql` (a count) until it reaches at least `want`, for at most `limit`: for
/// counts that may jump past a value between two polls.
pub async fn wait_for_at_least(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = count(pool, sql).await;
        if got >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for `{sql}` >= {want}, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `sql` (a boolean) until it is true, for at most `limit`; `what` says in the
/// failure what never happened.
pub async fn wait_until(pool: &PgPool, sql: &str, what: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let holds: bool = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if holds {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for {what}: `{sql}` stayed false"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server process behind a connection, to find it in `pg_locks` and
/// `pg_stat_activity`.
pub async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Waits until a backend of this database waits for a lock that backend `blocker`
/// holds (and, if given, that this backend is `waiter`): the race is on, not merely
/// about to start.
pub async fn wait_until_blocked_by(pool: &PgPool, blocker: i32, waiter: Option<i32>) {
    let waiter = waiter.map_or("true".to_owned(), |pid| format!("a.pid = {pid}"));
    wait_until(
        pool,
        &format!(
            "select exists (select 1 from pg_stat_activity a
              where a.datname = current_database() and a.wait_event_type = 'Lock'
                and {blocker} = any(pg_blocking_pids(a.pid)) and {waiter})"
        ),
        &format!("a backend to wait for a lock held by backend {blocker}"),
        Duration::from_secs(10),
    )
    .await;
}

/// The channel the queue's listener LISTENs on (`damascus_queue::listener`, private).
const QUEUE_CHANNEL: &str = "damascus_jobs";

/// A one-connection pool of its own for watching `pg_stat_activity`: the worker pool's
/// connections keep the last statement they ran, and borrowing one of them to look
/// would overwrite it.
pub async fn observer(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

/// Opens `n` live connections of `pool` and leaves them idle (a connection a server
/// restart closed is dropped and replaced). A pool hands out the connection idle
/// longest first, so with many idle, the one a statement just used is used again only
/// after all the others: while the worker pool is idle, its last claim stays visible
/// in `pg_stat_activity` (see `wait_until_listening_and_idle`).
pub async fn warm(pool: &PgPool, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut open = Vec::new();
    while open.len() < n {
        let mut conn = pool.acquire().await.unwrap();
        match sqlx::query("select 1").execute(&mut *conn).await {
            Ok(_) => open.push(conn),
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "cannot open {n} connections: {e}"
            ),
        }
    }
}

/// A pool for a worker pool under test, in the product's settings, with 16
/// connections open (`warm`).
pub async fn warm_pool(url: &str) -> PgPool {
    let pool = damascus_db::connect::pool_options(damascus_db::connect::PoolSettings {
        max_connections: 16,
        ..Default::default()
    })
    .connect(url)
    .await
    .unwrap();
    warm(&pool, 16).await;
    pool
}

/// Waits until a worker pool listens on the queue channel and has gone idle since: its
/// claim loop ran a claim that started after the LISTEN completed and after `after` (a
/// SQL timestamp), and nothing ran on that connection since. From then on, the loop
/// claims again only when the listener wakes it or its poll comes round; a job that
/// appears meanwhile is not found by a claim already under way.
///
/// Each pool connection shows its last statement in `pg_stat_activity`; the listener's
/// connection is detached from the pool, so its `LISTEN` stays visible. The claim's
/// stays visible if the worker pool has many idle connections (`warm`).
pub async fn wait_until_listening_and_idle(observer: &PgPool, after: &str) {
    wait_until(
        observer,
        &format!(
            "select exists (select 1 from pg_stat_activity l, pg_stat_activity c
              where l.datname = current_database() and l.state = 'idle'
                and l.query like 'LISTEN %' and l.query like '%\"{channel}\"%'
                and c.datname = current_database() and c.state = 'idle'
                and c.query like '%from damascus_claim(%'
                and c.query_start > l.state_change and c.query_start > {after})",
            channel = QUEUE_CHANNEL,
        ),
        "the pool to listen and then claim once more (idle)",
        Duration::from_secs(20),
    )
    .await;
}

/// The backend holding the queue's LISTEN, once there is one.
pub async fn listener_backend(observer: &PgPool) -> i32 {
    let sql = format!(
        "select pid from pg_stat_activity where datname = current_database() and state = 'idle'
          and query like 'LISTEN %' and query like '%\"{}\"%'",
        QUEUE_CHANNEL
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = sqlx::query_scalar(&sql)
            .fetch_optional(observer)
            .await
            .unwrap()
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend listens on the queue channel: `{sql}`"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker pool in a child process of its own.
pub struct WorkerProcess {
    pub child: Child,
}

pub struct ProcessSpec {
    pub concurrency: u32,
    pub lease: Duration,
    pub script: Script,
    pub work: Duration,
}

impl WorkerProcess {
    pub fn spawn(db: &TestDatabase, spec: &ProcessSpec) -> WorkerProcess {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "worker_process::entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("QUEUE_TEST_WORKER", "1")
            .env("QUEUE_TEST_DATABASE_URL", &db.url)
            .env("QUEUE_TEST_CONCURRENCY", spec.concurrency.to_string())
            .env("QUEUE_TEST_LEASE_MS", spec.lease.as_millis().to_string())
            .env("QUEUE_TEST_SCRIPT", spec.script.name())
            .env("QUEUE_TEST_WORK_MS", spec.work.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        WorkerProcess { child }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM, then wait: a graceful stop.
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker process exited with {status}");
    }

    pub fn kill(mut self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Registers a worker by hand (for tests that claim and end jobs themselves).
pub async fn test_worker(pool: &PgPool, pid: u32, concurrency: u32) -> damascus_db::jobs::WorkerId {
    let info = damascus_db::jobs::WorkerInfo {
        host: "test".into(),
        pid,
        lease: Duration::from_secs(30),
    };
    damascus_db::jobs::register_worker(pool, &info, Some(concurrency))
        .await
        .unwrap()
        .id
}
