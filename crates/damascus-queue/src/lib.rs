//! damascus-queue runs phases: a pool of workers that claims jobs from PostgreSQL under
//! a global cap, runs each phase outside any transaction, keeps its lease alive, and
//! ends it with one transaction (verdict, item change, event, next job).
//!
//! Wake-up is LISTEN/NOTIFY on the queue channel (the spawn trigger and every freed
//! slot notify); polling every `poll_interval` is only the safety net.
//!
//! Architecture invariants: no SQL here (every statement is in `damascus-db::jobs`);
//! nothing here knows what a phase does — that is the `PhaseRunner` the caller passes.

mod completer;
mod config;
mod error_chain;
mod executor;
mod keep_alive;
mod listener;
mod maintenance;
pub mod orphans;
mod phase;
mod pool;
mod producer;
mod unwind;

pub use config::{QueueConfig, RetryPolicy};
pub use phase::{JobContext, PhaseFuture, PhaseRunner};
pub use pool::{run_until_idle, CycleSummary, WorkerPool};
