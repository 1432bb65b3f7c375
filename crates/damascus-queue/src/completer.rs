//! The completer: ends claims. Verdicts go to one group-commit task that records many in
//! one statement and claims the next jobs for the slots they free (`jobs::end_group`);
//! an end the group does not record, a retry and a release are written alone by
//! `end_claim`, retrying while the database is unreachable for up to one lease.
//!
//! Must not touch: which jobs to claim when (the producer's), how a phase runs (the
//! executor's), or leases of phases still running (the keep-alive's). Every end is
//! fenced on its claim in `damascus-db::jobs`, so an end written twice or for a lost
//! claim changes nothing.

use std::sync::Arc;
use std::time::Duration;

use damascus_core::PhaseReport;
use damascus_db::budget::Spend;
use damascus_db::jobs::{self, ClaimedJob, Ended};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pool::Shared;

/// How a claim ends.
pub(crate) enum End {
    Report(PhaseReport),
    Retry {
        reason: String,
        costs: Vec<damascus_core::CostEntry>,
        delay: Duration,
    },
    Defer {
        reason: String,
        costs: Vec<damascus_core::CostEntry>,
        until: std::time::SystemTime,
    },
    /// The phase panicked: a retry whose run reported no costs.
    Panicked {
        message: String,
        delay: Duration,
    },
    Release,
}

/// One verdict for the group-commit task; `reply` gets `None` when its batch could not
/// be written (the phase then records it alone, with retries).
pub(crate) struct FinishRequest {
    job: ClaimedJob,
    report: PhaseReport,
    reply: oneshot::Sender<Option<Ended>>,
}

/// The most verdicts one group commit records.
const MAX_GROUP: usize = 64;

/// How long a group commit waits for the verdicts of this process's other running
/// phases once one has arrived (a phase lasts seconds to minutes; this is noise to it).
const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// Records verdicts in groups: the verdicts waiting when a commit starts, and those of
/// the process's other running phases that arrive within `GATHER_WINDOW`, go into it
/// together, so under load one statement records many and claims the next jobs
/// (`jobs::end_group`). A group that fails is handed back, and each of its phases
/// records its verdict alone (`end_claim`'s retries); so does each end the group does
/// not record.
pub(crate) async fn group_commit_loop(
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
            // merge-queue head's batch) is recorded by its phase alone, as `finish`.
            for (request, ended) in group.into_iter().zip(finished.ended) {
                tracing::debug!(job = %request.job.job_id, ?ended, "claim ended");
                let _ = request.reply.send(ended);
            }
        }
        Err(e) => {
            shared
                .failed_groups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %crate::error_chain::Chain(&e), verdicts = group.len(), "cannot record a group of verdicts; recording each alone");
            for request in group {
                let _ = request.reply.send(None);
            }
        }
    }
}

/// Writes the end of a claim, retrying while the database is unreachable for up to one
/// lease (the claim is safe that long); after that the job runs again elsewhere.
/// Verdicts go to the group commit first.
pub(crate) async fn end_claim(shared: &Shared, job: &ClaimedJob, end: End) -> Option<Ended> {
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
            } => {
                let spend = Spend::Reported(costs);
                jobs::retry_later(&shared.pool, shared.worker, job, reason, spend, *delay).await
            }
            End::Panicked { message, delay } => {
                let reason = format!("the phase panicked: {message}");
                let spend = Spend::Unreported {
                    why: "the phase panicked",
                };
                jobs::retry_later(&shared.pool, shared.worker, job, &reason, spend, *delay).await
            }
            End::Defer {
                reason,
                costs,
                until,
            } => jobs::defer(&shared.pool, shared.worker, job, reason, costs, *until).await,
            End::Release => jobs::release(&shared.pool, shared.worker, job).await,
        };
        match result {
            Ok(ended) => {
                tracing::debug!(job = %job.job_id, ?ended, "claim ended");
                return Some(ended);
            }
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(job = %job.job_id, error = %crate::error_chain::Chain(&e), "cannot record the end of a job; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(job = %job.job_id, error = %crate::error_chain::Chain(&e), "gave up recording the end of a job; it runs again after its lease");
                return None;
            }
        }
    }
}
