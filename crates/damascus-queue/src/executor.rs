//! The executor: runs one claimed job's phase through the `PhaseRunner`, outside any
//! transaction, until it reports, panics or its claim is stopped (lost, or the worker
//! shutting down), and turns the outcome into the claim's end: the verdict, a retry
//! after a backoff for a transient error or a panic, or a release.
//!
//! Must not touch: claiming (the producer's), how an end is written (the completer's),
//! or leases (the keep-alive's).

use std::sync::{Arc, Mutex};

use damascus_core::{PhaseReport, Verdict};
use damascus_db::jobs::{ClaimedJob, Ended};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::completer::{end_claim, End};
use crate::phase::JobContext;
use crate::pool::{Shared, StopReason};

/// Runs one claimed job and ends its claim. `None`: the end could not be written.
pub(crate) async fn run_phase(
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
            tracing::warn!(error = %crate::error_chain::Chain(&e), "cannot look for process groups dead workers left running");
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
    let run = crate::unwind::catch_panic(async { shared.runner.run(context).await });
    let report = tokio::select! {
        report = run.instrument(span) => Some(report),
        _ = cancel.cancelled() => None,
    };
    damascus_metrics::phase_ran(target.phase.as_str(), started.elapsed());
    let verdict = report
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|r| r.verdict.kind());
    let end = match report {
        // A panicking phase runs again like a transient error; what it reserved is
        // recorded as spend unknown.
        Some(Err(message)) => {
            tracing::error!(job = %job.job_id, phase = %target.phase, %message, "the phase panicked; its job runs again");
            let runs = u32::try_from(job.runs).unwrap_or(1);
            End::Panicked {
                message,
                delay: shared.config.retry.delay(runs, rand::thread_rng().gen()),
            }
        }
        Some(Ok(PhaseReport {
            verdict: Verdict::TransientError { reason },
            costs,
            // A batch is decided again when the job runs again.
            batch: _,
        })) => {
            let runs = u32::try_from(job.runs).unwrap_or(1);
            let delay = shared.config.retry.delay(runs, rand::thread_rng().gen());
            End::Retry {
                reason,
                costs,
                delay,
            }
        }
        // A wait the runner was asked for (a forge's rate limit): the job waits until
        // then with its run given back; it is not an attempt.
        Some(Ok(PhaseReport {
            verdict: Verdict::Deferred { reason, until },
            costs,
            batch: _,
        })) => End::Defer {
            reason,
            costs,
            until,
        },
        Some(Ok(report)) => End::Report(report),
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
