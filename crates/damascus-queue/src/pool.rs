//! The worker pool: one claim loop, one task per running phase, a keep-alive task, a
//! reaper and the listener. `WorkerPool::start` runs until `shutdown`;
//! `run_until_idle` (for `damascus cycle`) stops once nothing is runnable.
//!
//! Claim short, run outside the transaction: a claim is one statement that marks jobs
//! and slots as held under a lease; the phase then runs with no transaction or row lock
//! open, and its end is one transaction fenced on the claim (see `damascus-db::jobs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use damascus_core::{PhaseReport, Verdict};
use damascus_db::jobs::{self, ClaimedJob, Ended, WorkerId};
use damascus_db::DbResult;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::QueueConfig;
use crate::listener;
use crate::phase::{JobContext, PhaseRunner};

/// What a pool did, for `damascus cycle` and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub claimed: u64,
    /// Counted verdicts recorded, by (from, to) phase.
    pub transitions: BTreeMap<(String, String), u64>,
    pub retries_scheduled: u64,
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

    fn record(&mut self, ended: &Ended) {
        match ended {
            Ended::Advanced { from, to } => {
                *self
                    .transitions
                    .entry((from.to_string(), to.to_string()))
                    .or_default() += 1;
            }
            Ended::RetryScheduled { .. } => self.retries_scheduled += 1,
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
            "retries scheduled: {}, out of attempts: {}, released: {}, superseded: {}, lost claims: {}, unrecorded ends: {}",
            self.retries_scheduled, self.exhausted, self.released, self.superseded, self.lost_claims, self.end_errors
        )
    }
}

/// Why a running phase was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    LostClaim,
    Shutdown,
}

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

struct Shared {
    pool: PgPool,
    config: QueueConfig,
    runner: Arc<dyn PhaseRunner>,
    worker: WorkerId,
    registered: jobs::Registered,
    info: jobs::WorkerInfo,
    /// The phases running now, by claim token.
    running: Mutex<HashMap<Uuid, Running>>,
    wake: Arc<Notify>,
    /// Poked when an item was cancelled: check the claims now, not at the next round.
    check_claims: Arc<Notify>,
    /// Poked when a lock hand-over passed over a busy waiter: respawn now.
    respawn: Arc<Notify>,
    /// Verdicts waiting to be recorded by the group-commit task.
    finishes: mpsc::UnboundedSender<FinishRequest>,
    /// Jobs the group commit claimed for the slots it freed, for the main loop to run.
    /// Sent before the verdicts' replies, so they are here when their phases are joined.
    claimed: mpsc::UnboundedSender<Vec<ClaimedJob>>,
    /// Cancelled when the pool stops claiming; the group commit then claims no more.
    stop_claiming: CancellationToken,
    failed_groups: std::sync::atomic::AtomicU64,
}

/// One verdict for the group-commit task; `reply` gets `None` when its batch could not
/// be written (the phase then records it alone, with retries).
struct FinishRequest {
    job: ClaimedJob,
    report: PhaseReport,
    reply: oneshot::Sender<Option<Ended>>,
}

/// The most verdicts one group commit records.
const MAX_GROUP: usize = 64;

/// How long a group commit waits for the verdicts of this process's other running
/// phases once one has arrived (a phase lasts seconds to minutes; this is noise to it).
const GATHER_WINDOW: Duration = Duration::from_millis(1);

impl Shared {
    fn stop_running(&self, claim: &Uuid, why: StopReason) {
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
        let main = tokio::spawn(main_loop(
            shared,
            finish_requests,
            claimed_jobs,
            exit_when_idle,
        ));
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
                tracing::error!(error = %e, "worker pool task failed");
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

async fn main_loop(
    shared: Arc<Shared>,
    finish_requests: mpsc::UnboundedReceiver<FinishRequest>,
    mut claimed_jobs: mpsc::UnboundedReceiver<Vec<ClaimedJob>>,
    exit_when_idle: bool,
) -> CycleSummary {
    let stop_claiming = shared.stop_claiming.clone();
    let background = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(listener::listen(
        shared.pool.clone(),
        shared.wake.clone(),
        shared.check_claims.clone(),
        shared.respawn.clone(),
        background.clone(),
    ));
    helpers.spawn(keep_alive_loop(shared.clone(), background.clone()));
    helpers.spawn(group_commit_loop(
        shared.clone(),
        finish_requests,
        background.clone(),
    ));
    helpers.spawn(reaper_loop(shared.clone(), background.clone()));

    let mut summary = CycleSummary::default();
    let mut phases: JoinSet<(Uuid, Option<Ended>)> = JoinSet::new();
    let mut failures: u32 = 0;
    let config = shared.config.clone();
    loop {
        if stop_claiming.is_cancelled() {
            break;
        }
        // Jobs the group commit claimed first: they fill the slots it freed.
        while let Ok(jobs) = claimed_jobs.try_recv() {
            spawn_claimed(&shared, &mut phases, &mut summary, jobs);
        }
        let free = shared
            .registered
            .concurrency
            .saturating_sub(phases.len() as u32);
        let mut wait = config.poll_interval;
        if free > 0 {
            match jobs::claim(&shared.pool, shared.worker, free, config.lease).await {
                Ok(claimed) => {
                    failures = 0;
                    let got = claimed.len() as u32;
                    summary.claimed += u64::from(got);
                    damascus_metrics::jobs_claimed(claimed.iter().map(|j| j.waited));
                    for job in claimed {
                        spawn_phase(&shared, &mut phases, job);
                    }
                    if got < free {
                        // No more ready jobs, or none with a free slot. Ready jobs and a
                        // full cap: a freed slot notifies, so wait for that (or the
                        // poll). Otherwise sleep until the next delayed job is due.
                        let due = match jobs::next_runnable_in(&shared.pool).await {
                            Ok(due) => due,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the next due job");
                                None
                            }
                        };
                        match due {
                            Some(due) if due.is_zero() => {}
                            Some(due) => wait = wait.min(due.max(Duration::from_millis(5))),
                            None => {}
                        }
                        let ready_now = due.is_some_and(|d| d.is_zero());
                        if exit_when_idle && phases.is_empty() && got == 0 && !ready_now {
                            break;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    let backoff = Duration::from_millis(100u64 << failures.min(6));
                    tracing::warn!(error = %e, ?backoff, "claiming jobs failed; retrying");
                    wait = backoff;
                }
            }
        }
        tokio::select! {
            _ = stop_claiming.cancelled() => break,
            _ = shared.wake.notified() => {}
            Some(jobs) = claimed_jobs.recv() => spawn_claimed(&shared, &mut phases, &mut summary, jobs),
            Some(done) = phases.join_next(), if !phases.is_empty() => {
                record_done(&shared, &mut summary, done);
                // Phases that ended together (one group commit) free their slots
                // together: claim for all of them at once.
                while let Some(done) = phases.try_join_next() {
                    record_done(&shared, &mut summary, done);
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    let _ = jobs::mark_stopping(&shared.pool, shared.worker).await;
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        loop {
            // A group commit that began before claiming stopped may have claimed: run
            // those too (they are held, and would otherwise wait for their lease).
            while let Ok(jobs) = claimed_jobs.try_recv() {
                spawn_claimed(&shared, &mut phases, &mut summary, jobs);
            }
            match phases.join_next().await {
                Some(done) => record_done(&shared, &mut summary, done),
                None => break,
            }
        }
    })
    .await;
    if drained.is_err() {
        let ids: Vec<Uuid> = shared
            .running
            .lock()
            .expect("running map lock")
            .keys()
            .copied()
            .collect();
        tracing::warn!(
            jobs = ids.len(),
            "grace period over; stopping running phases and releasing their jobs"
        );
        for id in &ids {
            shared.stop_running(id, StopReason::Shutdown);
        }
        while let Some(done) = phases.join_next().await {
            record_done(&shared, &mut summary, done);
        }
    }
    background.cancel();
    while helpers.join_next().await.is_some() {}
    // Jobs a group commit claimed after the last phase was stopped (the grace period
    // ran out while it committed): give them back at once instead of leaving them to
    // their lease.
    while let Ok(jobs) = claimed_jobs.try_recv() {
        for job in jobs {
            match jobs::release(&shared.pool, shared.worker, &job).await {
                Ok(ended) => summary.record(&ended),
                Err(e) => {
                    tracing::warn!(job = %job.job_id, error = %e, "cannot release a job claimed during shutdown; it runs again after its lease");
                    summary.end_errors += 1;
                }
            }
        }
    }
    summary.failed_groups = shared
        .failed_groups
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = jobs::deregister_worker(&shared.pool, shared.worker).await {
        tracing::warn!(error = %e, "cannot deregister the worker; the reaper will");
    }
    summary
}

fn record_done(
    shared: &Shared,
    summary: &mut CycleSummary,
    done: Result<(Uuid, Option<Ended>), tokio::task::JoinError>,
) {
    match done {
        Ok((job, ended)) => {
            shared
                .running
                .lock()
                .expect("running map lock")
                .remove(&job);
            match ended {
                Some(ended) => summary.record(&ended),
                None => summary.end_errors += 1,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "a phase task panicked; its job runs again after its lease");
            summary.end_errors += 1;
        }
    }
}

fn spawn_claimed(
    shared: &Arc<Shared>,
    phases: &mut JoinSet<(Uuid, Option<Ended>)>,
    summary: &mut CycleSummary,
    jobs: Vec<ClaimedJob>,
) {
    summary.claimed += jobs.len() as u64;
    damascus_metrics::jobs_claimed(jobs.iter().map(|j| j.waited));
    for job in jobs {
        spawn_phase(shared, phases, job);
    }
}

fn spawn_phase(shared: &Arc<Shared>, phases: &mut JoinSet<(Uuid, Option<Ended>)>, job: ClaimedJob) {
    let cancel = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    shared.running.lock().expect("running map lock").insert(
        job.claim,
        Running {
            cancel: cancel.clone(),
            reason: reason.clone(),
        },
    );
    let shared = shared.clone();
    phases.spawn(async move {
        let claim = job.claim;
        let ended = run_phase(&shared, job, cancel, reason).await;
        (claim, ended)
    });
}

/// Runs one claimed job and ends its claim. `None`: the end could not be written.
async fn run_phase(
    shared: &Shared,
    job: ClaimedJob,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) -> Option<Ended> {
    let Some(target) = job.target else {
        // A queue message whose item is gone: drop it.
        return end_claim(shared, &job, End::Report(Verdict::pass().into())).await;
    };
    if job.runs > 1 {
        // An earlier run of this job may have died with its worker on this host: what
        // it left running goes before the job runs again.
        if let Err(e) = crate::orphans::sweep(&shared.pool).await {
            tracing::warn!(error = %e, "cannot look for process groups dead workers left running");
        }
    }
    let span = tracing::info_span!("phase", job = %job.job_id, item = target.item_id, phase = %target.phase, attempt = target.attempt);
    let context = JobContext {
        job_id: job.job_id,
        claim: job.claim,
        item_id: target.item_id,
        phase: target.phase,
        attempt: target.attempt,
        pool: shared.pool.clone(),
        cancel: cancel.clone(),
    };
    let started = std::time::Instant::now();
    let report = tokio::select! {
        report = shared.runner.run(context).instrument(span) => Some(report),
        _ = cancel.cancelled() => None,
    };
    damascus_metrics::phase_ran(target.phase.as_str(), started.elapsed());
    let verdict = report.as_ref().map(|r| r.verdict.kind());
    let end = match report {
        Some(PhaseReport {
            verdict: Verdict::TransientError { reason },
            costs,
            // A batch is decided again when the job runs again.
            batch: _,
        }) => {
            let runs = u32::try_from(job.runs).unwrap_or(1);
            let delay = shared.config.retry.delay(runs, rand::thread_rng().gen());
            End::Retry {
                reason,
                costs,
                delay,
            }
        }
        Some(report) => End::Report(report),
        None => match *reason.lock().expect("reason lock") {
            Some(StopReason::Shutdown) => End::Release,
            Some(StopReason::LostClaim) | None => {
                tracing::warn!(job = %job.job_id, phase = %target.phase, "claim lost; the phase was stopped");
                return Some(Ended::LostClaim);
            }
        },
    };
    let ended = end_claim(shared, &job, end).await;
    match (&ended, verdict) {
        (Some(Ended::Advanced { from, to }), Some(verdict)) => {
            damascus_metrics::transition(from.as_str(), to.as_str(), verdict.as_str())
        }
        (Some(Ended::Exhausted), Some(verdict)) => {
            damascus_metrics::transition(target.phase.as_str(), "blocked", verdict.as_str())
        }
        _ => {}
    }
    ended
}

enum End {
    Report(PhaseReport),
    Retry {
        reason: String,
        costs: Vec<damascus_core::CostEntry>,
        delay: Duration,
    },
    Release,
}

/// Records verdicts in groups: the verdicts waiting when a commit starts, and those of
/// the process's other running phases that arrive within `GATHER_WINDOW`, go into it
/// together, so under load one statement records many and claims the next jobs
/// (`jobs::end_group`). A group that fails is handed back, and each of its phases
/// records its verdict alone (`end_claim`'s retries); so does each end the group does
/// not record.
async fn group_commit_loop(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<FinishRequest>,
    stop: CancellationToken,
) {
    let mut conn = GroupConnection::default();
    loop {
        let first = tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let mut group = vec![first];
        // Phases that started together end together: wait a moment for the rest of
        // this process's running phases, so that they share this commit instead of
        // paying for one of their own right after it.
        let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
        while group.len() < MAX_GROUP {
            if let Ok(request) = requests.try_recv() {
                group.push(request);
                continue;
            }
            let running = shared.running.lock().expect("running map lock").len();
            if group.len() >= running {
                break;
            }
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(request)) => group.push(request),
                _ => break,
            }
        }
        record_group(&shared, &mut conn, group).await;
    }
}

/// The connection the group commit keeps between groups: taking one from the pool for
/// each group would cost sqlx's two pings (on release and on acquire), round trips on
/// the critical path of every cycle. One idle for a while is pinged before use; one
/// that failed is dropped and replaced.
#[derive(Default)]
struct GroupConnection {
    held: Option<(
        sqlx::pool::PoolConnection<sqlx::Postgres>,
        tokio::time::Instant,
    )>,
}

impl GroupConnection {
    async fn get(&mut self, pool: &PgPool) -> Result<&mut sqlx::PgConnection, sqlx::Error> {
        use sqlx::Connection;
        if let Some((conn, last_used)) = &mut self.held {
            if last_used.elapsed() >= damascus_db::connect::PING_IF_IDLE_FOR
                && conn.ping().await.is_err()
            {
                self.held = None;
            }
        }
        if self.held.is_none() {
            self.held = Some((pool.acquire().await?, tokio::time::Instant::now()));
        }
        let (conn, last_used) = self.held.as_mut().expect("held just now");
        *last_used = tokio::time::Instant::now();
        Ok(&mut **conn)
    }

    fn drop_failed(&mut self) {
        self.held = None;
    }
}

/// Records one group with `jobs::end_group` and answers each of its phases.
async fn record_group(shared: &Shared, conn: &mut GroupConnection, group: Vec<FinishRequest>) {
    let ends: Vec<(&ClaimedJob, &PhaseReport)> =
        group.iter().map(|r| (&r.job, &r.report)).collect();
    // The slots this group frees go to the next jobs in the same statement, up to
    // this process's fair share of the cap: the rest are freed, and their NOTIFY
    // lets the other processes claim them.
    let claim_next = (!shared.stop_claiming.is_cancelled()).then(|| {
        let running = shared.running.lock().expect("running map lock").len();
        jobs::ClaimNext {
            max: group.len() as u32,
            running_besides: running.saturating_sub(group.len()) as u32,
            lease: shared.config.lease,
        }
    });
    let ended = match conn.get(&shared.pool).await {
        Ok(c) => jobs::end_group(c, shared.worker, &ends, claim_next).await,
        Err(e) => Err(e.into()),
    };
    if ended.is_err() {
        conn.drop_failed();
    }
    match ended {
        Ok(finished) => {
            if !finished.claimed.is_empty() {
                let _ = shared.claimed.send(finished.claimed);
            }
            // An end not recorded here (a lost claim, an item changed meanwhile, a
            // verdict that blocks) is recorded by its phase alone, as `finish`.
            for (request, ended) in group.into_iter().zip(finished.ended) {
                tracing::debug!(job = %request.job.job_id, ?ended, "claim ended");
                let _ = request.reply.send(ended);
            }
        }
        Err(e) => {
            shared
                .failed_groups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, verdicts = group.len(), "cannot record a group of verdicts; recording each alone");
            for request in group {
                let _ = request.reply.send(None);
            }
        }
    }
}

/// Writes the end of a claim, retrying while the database is unreachable for up to one
/// lease (the claim is safe that long); after that the job runs again elsewhere.
/// Verdicts go to the group commit first.
async fn end_claim(shared: &Shared, job: &ClaimedJob, end: End) -> Option<Ended> {
    if let End::Report(report) = &end {
        let (reply, answer) = oneshot::channel();
        let request = FinishRequest {
            job: job.clone(),
            report: report.clone(),
            reply,
        };
        if shared.finishes.send(request).is_ok() {
            if let Ok(Some(ended)) = answer.await {
                return Some(ended);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + shared.config.lease;
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = match &end {
            End::Report(report) => jobs::finish(&shared.pool, shared.worker, job, report).await,
            End::Retry {
                reason,
                costs,
                delay,
            } => jobs::retry_later(&shared.pool, shared.worker, job, reason, costs, *delay).await,
            End::Release => jobs::release(&shared.pool, shared.worker, job).await,
        };
        match result {
            Ok(ended) => {
                tracing::debug!(job = %job.job_id, ?ended, "claim ended");
                return Some(ended);
            }
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(job = %job.job_id, error = %e, "cannot record the end of a job; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(job = %job.job_id, error = %e, "gave up recording the end of a job; it runs again after its lease");
                return None;
            }
        }
    }
}

/// Keeps this worker's leases and heartbeat alive. When keep-alives fail for as long
/// as a lease lasts, other workers may already run these jobs: every running phase is
/// stopped, so the cap holds and no phase runs twice at once.
async fn keep_alive_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.config.keep_alive_every()) => {}
            _ = shared.check_claims.notified() => {}
        }
        let claims: Vec<Uuid> = shared
            .running
            .lock()
            .expect("running map lock")
            .keys()
            .copied()
            .collect();
        let kept = async {
            jobs::heartbeat(&shared.pool, &shared.registered, &shared.info).await?;
            jobs::keep_alive(&shared.pool, &claims, shared.config.lease).await
        };
        // A keep-alive that hangs (a lock it waits for, a server that stopped answering)
        // counts as failed once the next one is due, so the check below still runs.
        let kept = match tokio::time::timeout(shared.config.keep_alive_every(), kept).await {
            Ok(kept) => kept.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {:?}",
                shared.config.keep_alive_every()
            )),
        };
        match kept {
            Ok(held) => {
                last_ok = tokio::time::Instant::now();
                for claim in claims.iter().filter(|c| !held.contains(c)) {
                    // Either it ended in the meantime (then it is no longer in the map)
                    // or another claim holds the job now.
                    shared.stop_running(claim, StopReason::LostClaim);
                }
            }
            Err(e) => {
                let silent = last_ok.elapsed();
                if silent + shared.config.keep_alive_every() >= shared.config.lease {
                    tracing::error!(error = %e, ?silent, "keep-alives failed for a whole lease; stopping every running phase");
                    for claim in &claims {
                        shared.stop_running(claim, StopReason::LostClaim);
                    }
                } else {
                    tracing::warn!(error = %e, "keep-alive failed; leases run out unless the next one succeeds");
                }
            }
        }
    }
}

/// The reaper every `reap_interval`, and its respawn pass alone whenever a lock
/// hand-over asks for it. A pass can wait for a row another transaction holds (the
/// respawn is asked for exactly then); stopping does not wait for it.
async fn reaper_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut next_reap = tokio::time::Instant::now();
    loop {
        let respawn_only = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_reap) => false,
            _ = shared.respawn.notified() => true,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = reaper_pass(&shared, respawn_only) => {}
        }
        if !respawn_only {
            next_reap = tokio::time::Instant::now() + shared.config.reap_interval;
        }
    }
}

async fn reaper_pass(shared: &Shared, respawn_only: bool) {
    if respawn_only {
        match jobs::respawn_jobless(&shared.pool).await {
            Ok(0) => {}
            Ok(respawned) => tracing::info!(respawned, "respawned after a lock hand-over"),
            Err(e) => tracing::warn!(error = %e, "respawn failed"),
        }
        return;
    }
    match jobs::reap(&shared.pool, shared.config.stale_worker_after()).await {
        Ok(reaped) if reaped != jobs::Reaped::default() => tracing::info!(?reaped, "reaper"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reaper failed"),
    }
    if let Err(e) = crate::orphans::sweep(&shared.pool).await {
        tracing::warn!(error = %e, "cannot look for process groups dead workers left running");
    }
}
