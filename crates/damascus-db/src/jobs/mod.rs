//! The queue's statements, one file per role: worker registration and heartbeats
//! (`registry`), claiming jobs under the global cap (`claim`), keeping leases alive
//! (`keep_alive`), ending a claim (finish, retry later, release: `end`), each ending in
//! one transaction with the item change and its events, and the reaper's safety net
//! (`maintenance`). This file holds the small types they share and re-exports their
//! public items, so callers name everything as `jobs::X`.
//!
//! A claim is fenced: every way of ending it first locks the slot row that holds its
//! claim token. If the lease ran out and another claim took the job (even one by the
//! same worker), the slot holds another token, the end is refused (`LostClaim`) and
//! nothing is written, so a job's verdict is recorded once even when its phase ran
//! twice. Lock order everywhere: slot row, then item row, then queue row.

use std::time::Duration;

use damascus_core::Phase;
use sqlx::postgres::types::PgInterval;

mod claim;
mod end;
mod keep_alive;
mod maintenance;
mod registry;

pub use claim::{claim, next_runnable_in, ClaimedItem, ClaimedJob};
pub use end::{
    defer, end_group, finish, finish_many, release, retry_later, ClaimNext, Ended, GroupEnded,
};
pub use keep_alive::keep_alive;
pub use maintenance::{reap, respawn_jobless, Reaped, RESPAWN_CHANNEL};
pub use registry::{
    deregister_worker, heartbeat, mark_stopping, register_worker, Registered, WorkerInfo,
};

/// A registered worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub i64);

/// What a job advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTarget {
    pub item_id: i64,
    pub phase: Phase,
    pub attempt: i32,
}

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}
