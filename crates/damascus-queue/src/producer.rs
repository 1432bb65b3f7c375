//! The producer: the claim loop. It claims as many ready jobs as this process has free
//! slots under the global cap (`jobs::claim`, one short statement), spawns a phase for
//! each, and waits for a LISTEN poke, a freed slot, jobs the completer claimed, the
//! next delayed job or the safety-net poll. On shutdown it lets the running phases
//! finish within the grace period, then stops the rest so that they are released.
//!
//! Must not touch: how a phase runs (the executor's), how an end is written (the
//! completer's), leases (the keep-alive's) or other workers' claims (maintenance's).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use damascus_db::jobs::{self, ClaimedJob, Ended};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::run_phase;
use crate::pool::{CycleSummary, Running, Shared, StopReason};

/// The claim loop's state: the phases it spawned and what they did.
pub(crate) struct Producer {
    shared: Arc<Shared>,
    /// Jobs the completer's group commit claimed, for this loop to run.
    claimed_jobs: mpsc::UnboundedReceiver<Vec<ClaimedJob>>,
    phases: JoinSet<(Uuid, Option<Ended>)>,
    /// The claim each phase task runs, for a task that fails instead of returning it.
    claims: std::collections::HashMap<tokio::task::Id, Uuid>,
    summary: CycleSummary,
}

impl Producer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        claimed_jobs: mpsc::UnboundedReceiver<Vec<ClaimedJob>>,
    ) -> Producer {
        Producer {
            shared,
            claimed_jobs,
            phases: JoinSet::new(),
            claims: Default::default(),
            summary: CycleSummary::default(),
        }
    }

    /// Claims and runs jobs until claiming stops (`shutdown`) or, with
    /// `exit_when_idle`, until nothing runs and nothing is ready.
    pub(crate) async fn claim_until_stopped(&mut self, exit_when_idle: bool) {
        let shared = self.shared.clone();
        let stop_claiming = shared.stop_claiming.clone();
        let mut failures: u32 = 0;
        let config = shared.config.clone();
        loop {
            if stop_claiming.is_cancelled() {
                break;
            }
            // Jobs the group commit claimed first: they fill the slots it freed.
            while let Ok(jobs) = self.claimed_jobs.try_recv() {
                self.spawn_claimed(jobs);
            }
            let free = shared
                .registered
                .concurrency
                .saturating_sub(self.phases.len() as u32);
            let mut wait = config.poll_interval;
            if free > 0 {
                match jobs::claim(&shared.pool, shared.worker, free, config.lease).await {
                    Ok(claimed) => {
                        failures = 0;
                        let got = claimed.len() as u32;
                        self.summary.claimed += u64::from(got);
                        damascus_metrics::jobs_claimed(claimed.iter().map(|j| j.waited));
                        for job in claimed {
                            self.spawn_phase(job);
                        }
                        if got < free {
                            // No more ready jobs, or none with a free slot. Ready jobs and a
                            // full cap: a freed slot notifies, so wait for that (or the
                            // poll). Otherwise sleep until the next delayed job is due.
                            let due = match jobs::next_runnable_in(&shared.pool).await {
                                Ok(due) => due,
                                Err(e) => {
                                    tracing::warn!(error = %crate::error_chain::Chain(&e), "cannot read the next due job");
                                    None
                                }
                            };
                            match due {
                                Some(due) if due.is_zero() => {}
                                Some(due) => wait = wait.min(due.max(Duration::from_millis(5))),
                                None => {}
                            }
                            let ready_now = due.is_some_and(|d| d.is_zero());
                            if exit_when_idle && self.phases.is_empty() && got == 0 && !ready_now {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        let backoff = Duration::from_millis(100u64 << failures.min(6));
                        tracing::warn!(error = %crate::error_chain::Chain(&e), ?backoff, "claiming jobs failed; retrying");
                        wait = backoff;
                    }
                }
            }
            tokio::select! {
                _ = stop_claiming.cancelled() => break,
                _ = shared.wake.notified() => {}
                Some(jobs) = self.claimed_jobs.recv() => self.spawn_claimed(jobs),
                Some(done) = self.phases.join_next(), if !self.phases.is_empty() => {
                    self.record_done(done);
                    // Phases that ended together (one group commit) free their slots
                    // together: claim for all of them at once.
                    while let Some(done) = self.phases.try_join_next() {
                        self.record_done(done);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Lets the running phases finish within `grace`; then stops the rest, whose jobs
    /// are released, and waits for them.
    pub(crate) async fn drain(&mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            loop {
                // A group commit that began before claiming stopped may have claimed: run
                // those too (they are held, and would otherwise wait for their lease).
                while let Ok(jobs) = self.claimed_jobs.try_recv() {
                    self.spawn_claimed(jobs);
                }
                match self.phases.join_next().await {
                    Some(done) => self.record_done(done),
                    None => break,
                }
            }
        })
        .await;
        if drained.is_err() {
            let ids = self.shared.running_claims();
            tracing::warn!(
                jobs = ids.len(),
                "grace period over; stopping running phases and releasing their jobs"
            );
            for id in &ids {
                self.shared.stop_running(id, StopReason::Shutdown);
            }
            while let Some(done) = self.phases.join_next().await {
                self.record_done(done);
            }
        }
    }

    /// Gives back at once the jobs a group commit claimed after the last phase was
    /// stopped (the grace period ran out while it committed), instead of leaving them
    /// to their lease; then returns what the pool did. Call once the completer stopped.
    pub(crate) async fn release_unstarted(mut self) -> CycleSummary {
        let shared = &self.shared;
        while let Ok(jobs) = self.claimed_jobs.try_recv() {
            for job in jobs {
                match jobs::release(&shared.pool, shared.worker, &job).await {
                    Ok(ended) => self.summary.record(&ended),
                    Err(e) => {
                        tracing::warn!(job = %job.job_id, error = %crate::error_chain::Chain(&e), "cannot release a job claimed during shutdown; it runs again after its lease");
                        self.summary.end_errors += 1;
                    }
                }
            }
        }
        self.summary
    }

    fn record_done(&mut self, done: Result<(Uuid, Option<Ended>), tokio::task::JoinError>) {
        let task = match &done {
            Ok(_) => None,
            Err(e) => Some(e.id()),
        };
        match done {
            Ok((claim, ended)) => {
                self.forget(&claim);
                match ended {
                    Some(ended) => self.summary.record(&ended),
                    None => self.summary.end_errors += 1,
                }
            }
            Err(e) => {
                // A panic of the runner is caught in the executor; this is the queue's
                // own code failing while it ended the claim. The keep-alive lets go of
                // the claim, so the job runs again once its lease ends.
                if let Some(claim) = task.and_then(|id| self.claims.get(&id).copied()) {
                    self.forget(&claim);
                }
                tracing::error!(error = %crate::error_chain::Chain(&e), "a phase task failed; its job runs again after its lease");
                self.summary.end_errors += 1;
            }
        }
        if let Some(id) = task {
            self.claims.remove(&id);
        }
    }

    /// Drops a claim from the running phases: the keep-alive extends it no more.
    fn forget(&mut self, claim: &Uuid) {
        self.shared
            .running
            .lock()
            .expect("running map lock")
            .remove(claim);
        self.claims.retain(|_, c| c != claim);
    }

    fn spawn_claimed(&mut self, jobs: Vec<ClaimedJob>) {
        self.summary.claimed += jobs.len() as u64;
        damascus_metrics::jobs_claimed(jobs.iter().map(|j| j.waited));
        for job in jobs {
            self.spawn_phase(job);
        }
    }

    fn spawn_phase(&mut self, job: ClaimedJob) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.shared
            .running
            .lock()
            .expect("running map lock")
            .insert(
                job.claim,
                Running {
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                },
            );
        let shared = self.shared.clone();
        let claim = job.claim;
        let task = self.phases.spawn(async move {
            let ended = run_phase(&shared, job, cancel, reason).await;
            (claim, ended)
        });
        self.claims.insert(task.id(), claim);
    }
}
