//! The worker pool: the parts of one worker wired together, and the state they share.
//! The parts follow River's roles: `producer` (the claim loop), `executor` (one phase),
//! `completer` (ending claims), `keep_alive` (leases), `listener` (NOTIFY) and
//! `maintenance` (the reaper). `WorkerPool::start` runs until `shutdown`;
//! `run_until_idle` (for `damascus cycle`) stops once nothing is runnable.
//!
//! Claim short, run outside the transaction: a claim is one statement that marks jobs
//! and slots as held under a lease; the phase then runs with no transaction or row lock
//! open, and its end is one transaction fenced on the claim (see `damascus-db::jobs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use damascus_db::jobs::{self, ClaimedJob, Ended, WorkerId};
use damascus_db::DbResult;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::completer::{self, FinishRequest};
use crate::config::QueueConfig;
use crate::keep_alive;
use crate::listener;
use crate::maintenance::Reaper;
use crate::phase::PhaseRunner;
use crate::producer::Producer;

/// What a pool did, for `damascus cycle` and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub claimed: u64,
    /// Counted verdicts recorded, by (from, to) phase.
    pub transitions: BTreeMap<(String, String), u64>,
    pub retries_scheduled: u64,
    /// Jobs that wait for a time a service asked for (a forge's rate limit).
    pub deferred: u64,
    pub exhausted: u64,
    pub released: u64,
    pub superseded: u64,
    pub lost_claims: u64,
    /// Ends that could not be written (database unreachable); those jobs run again
    /// after their lease.
    pub end_errors: u64,
    /// Group commits that failed, whose verdicts were then recorded one by one.
    pub failed_groups: u64,
}

impl CycleSummary {
    pub fn advanced(&self) -> u64 {
        self.transitions.values().sum()
    }

    pub(crate) fn record(&mut self, ended: &Ended) {
        match ended {
            Ended::Advanced { from, to } => {
                *self
                    .transitions
                    .entry((from.to_string(), to.to_string()))
                    .or_default() += 1;
            }
            Ended::RetryScheduled { .. } => self.retries_scheduled += 1,
            Ended::Deferred { .. } => self.deferred += 1,
            Ended::Exhausted => self.exhausted += 1,
            Ended::Released => self.released += 1,
            Ended::Superseded => self.superseded += 1,
            Ended::LostClaim => self.lost_claims += 1,
        }
    }
}

impl fmt::Display for CycleSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "jobs run: {}", self.claimed)?;
        for ((from, to), n) in &self.transitions {
            writeln!(f, "  {from} -> {to}: {n}")?;
        }
        write!(
            f,
            "retries scheduled: {}, waiting: {}, out of attempts: {}, released: {}, superseded: {}, lost claims: {}, unrecorded ends: {}",
            self.retries_scheduled, self.deferred, self.exhausted, self.released, self.superseded, self.lost_claims, self.end_errors
        )
    }
}

/// Why a running phase was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    LostClaim,
    Shutdown,
}

/// A running phase, for whoever has to stop it.
pub(crate) struct Running {
    pub(crate) cancel: CancellationToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
}

/// What the parts of one worker share.
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) config: QueueConfig,
    pub(crate) runner: Arc<dyn PhaseRunner>,
    pub(crate) worker: WorkerId,
    pub(crate) registered: jobs::Registered,
    pub(crate) info: jobs::WorkerInfo,
    /// The phases running now, by claim token.
    pub(crate) running: Mutex<HashMap<Uuid, Running>>,
    pub(crate) wake: Arc<Notify>,
    /// Poked when an item was cancelled: check the claims now, not at the next round.
    pub(crate) check_claims: Arc<Notify>,
    /// Poked when a lock hand-over passed over a busy waiter: respawn now.
    pub(crate) respawn: Arc<Notify>,
    /// Verdicts waiting to be recorded by the group-commit task.
    pub(crate) finishes: mpsc::UnboundedSender<FinishRequest>,
    /// Jobs the group commit claimed for the slots it freed, for the producer to run.
    /// Sent before the verdicts' replies, so they are here when their phases are joined.
    pub(crate) claimed: mpsc::UnboundedSender<Vec<ClaimedJob>>,
    /// Cancelled when the pool stops claiming; the group commit then claims no more.
    pub(crate) stop_claiming: CancellationToken,
    pub(crate) failed_groups: AtomicU64,
}

impl Shared {
    /// The claims of the phases running now.
    pub(crate) fn running_claims(&self) -> Vec<Uuid> {
        self.running
            .lock()
            .expect("running map lock")
            .keys()
            .copied()
            .collect()
    }

    pub(crate) fn stop_running(&self, claim: &Uuid, why: StopReason) {
        if let Some(running) = self.running.lock().expect("running map lock").get(claim) {
            *running.reason.lock().expect("reason lock") = Some(why);
            running.cancel.cancel();
        }
    }
}

/// A running pool; stop it with `shutdown`.
pub struct WorkerPool {
    worker: WorkerId,
    concurrency: u32,
    stop_claiming: CancellationToken,
    main: tokio::task::JoinHandle<CycleSummary>,
}

impl WorkerPool {
    /// Registers this process as a worker (setting the global cap when
    /// `config.concurrency` names one) and starts claiming.
    pub async fn start(
        pool: PgPool,
        config: QueueConfig,
        runner: Arc<dyn PhaseRunner>,
    ) -> DbResult<WorkerPool> {
        WorkerPool::launch(pool, config, runner, false).await
    }

    async fn launch(
        pool: PgPool,
        config: QueueConfig,
        runner: Arc<dyn PhaseRunner>,
        exit_when_idle: bool,
    ) -> DbResult<WorkerPool> {
        let info = jobs::WorkerInfo {
            host: crate::orphans::host_name().to_owned(),
            pid: std::process::id(),
            lease: config.lease,
        };
        let registered = jobs::register_worker(&pool, &info, config.concurrency).await?;
        // What a worker that died on this host left running goes first.
        crate::orphans::sweep(&pool).await?;
        let worker = registered.id;
        tracing::info!(
            worker = worker.0,
            host = info.host,
            concurrency = registered.concurrency,
            "worker registered"
        );
        let (finishes, finish_requests) = mpsc::unbounded_channel();
        let (claimed, claimed_jobs) = mpsc::unbounded_channel();
        let stop_claiming = CancellationToken::new();
        let shared = Arc::new(Shared {
            pool,
            config,
            runner,
            worker,
            registered,
            info,
            running: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            check_claims: Arc::new(Notify::new()),
            respawn: Arc::new(Notify::new()),
            finishes,
            claimed,
            stop_claiming: stop_claiming.clone(),
            failed_groups: Default::default(),
        });
        let main = tokio::spawn(run(shared, finish_requests, claimed_jobs, exit_when_idle));
        Ok(WorkerPool {
            worker,
            concurrency: registered.concurrency,
            stop_claiming,
            main,
        })
    }

    pub fn worker_id(&self) -> WorkerId {
        self.worker
    }

    /// The global cap in force when this worker started.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// Stops claiming, lets running phases finish within the grace period, stops and
    /// releases the rest (they run again at once elsewhere), and deregisters.
    /// Safe to call once the pool has stopped by itself.
    pub async fn shutdown(self) -> CycleSummary {
        self.stop_claiming.cancel();
        self.wait().await
    }

    /// Waits for the pool to stop (by `shutdown`, or when idle in cycle mode).
    pub async fn wait(self) -> CycleSummary {
        match self.main.await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::error!(error = %crate::error_chain::Chain(&e), "worker pool task failed");
                CycleSummary::default()
            }
        }
    }
}

/// Runs every job that is runnable now, and those the runs make runnable, with at most
/// `config.concurrency` at once (globally), then returns.
pub async fn run_until_idle(
    pool: PgPool,
    config: QueueConfig,
    runner: Arc<dyn PhaseRunner>,
) -> DbResult<CycleSummary> {
    let pool = WorkerPool::launch(pool, config, runner, true).await?;
    Ok(pool.wait().await)
}

/// Runs the parts of one worker until claiming stops, then shuts them down in order:
/// running phases finish (or are stopped and released), the background parts stop,
/// jobs claimed for slots nobody will use are released, and the worker deregisters.
async fn run(
    shared: Arc<Shared>,
    finish_requests: mpsc::UnboundedReceiver<FinishRequest>,
    claimed_jobs: mpsc::UnboundedReceiver<Vec<ClaimedJob>>,
    exit_when_idle: bool,
) -> CycleSummary {
    let background = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(listener::listen(
        shared.pool.clone(),
        shared.wake.clone(),
        shared.check_claims.clone(),
        shared.respawn.clone(),
        background.clone(),
    ));
    helpers.spawn(keep_alive::run(shared.clone(), background.clone()));
    helpers.spawn(completer::group_commit_loop(
        shared.clone(),
        finish_requests,
        background.clone(),
    ));
    let reaper = Reaper::start(shared.pool.clone(), &shared.config, shared.respawn.clone());

    let mut producer = Producer::new(shared.clone(), claimed_jobs);
    producer.claim_until_stopped(exit_when_idle).await;
    let _ = jobs::mark_stopping(&shared.pool, shared.worker).await;
    producer.drain(shared.config.shutdown_grace).await;
    background.cancel();
    reaper.stop().await;
    while helpers.join_next().await.is_some() {}
    let mut summary = producer.release_unstarted().await;
    summary.failed_groups = shared.failed_groups.load(Ordering::Relaxed);
    if let Err(e) = jobs::deregister_worker(&shared.pool, shared.worker).await {
        tracing::warn!(error = %crate::error_chain::Chain(&e), "cannot deregister the worker; the reaper will");
    }
    summary
}
