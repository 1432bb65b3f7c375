//! The seam between the queue and the loops: a `PhaseRunner` turns one job into a
//! verdict. The queue decides nothing about phases; the runner decides nothing about
//! claims, leases or transactions.

use std::future::Future;
use std::pin::Pin;

use damascus_core::{Phase, PhaseReport};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub type PhaseFuture = Pin<Box<dyn Future<Output = PhaseReport> + Send>>;

/// What a phase run needs to know about its job.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: Uuid,
    /// This claim of the job: budget reservations and process groups belong to it.
    pub claim: Uuid,
    pub item_id: i64,
    pub phase: Phase,
    /// Which run of this phase for this item (1 for the first).
    pub attempt: i32,
    pub pool: PgPool,
    /// Cancelled when the claim is lost or the worker stops: a runner that starts
    /// processes must kill them when this fires.
    pub cancel: CancellationToken,
}

pub trait PhaseRunner: Send + Sync + 'static {
    /// Runs one phase of one item: its verdict and what it spent. Must be idempotent:
    /// a lease can run a job twice.
    fn run(&self, job: JobContext) -> PhaseFuture;
}
