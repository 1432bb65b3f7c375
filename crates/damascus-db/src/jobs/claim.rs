//! Claiming jobs under the global cap (`damascus_claim`), reading its rows into
//! `ClaimedJob`s, and how long until the next job is runnable. It only takes claims:
//! ending one (and moving its item) belongs to `end`, which shares the claim columns
//! and their reader with this file.

use std::time::Duration;

use damascus_core::{Budget, Phase};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{interval, JobTarget, WorkerId};
use crate::error::DbResult;
use crate::{parse_enum, parse_opt_enum};

/// A job this worker holds under a lease. Only `claim` makes one, so holding a
/// `ClaimedJob` means the claim happened.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub job_id: Uuid,
    /// Names this claim; ends and keep-alives are fenced on it.
    pub claim: Uuid,
    pub slot: i32,
    /// `None` for a queue message whose item is gone; ending it discards it.
    pub target: Option<JobTarget>,
    /// How often the job has been claimed, this claim included.
    pub runs: i32,
    /// Runs left after this one.
    pub attempts_left: i32,
    /// The item as it was at the claim (`None` when it is gone): what the verdict's
    /// transition is decided from when the group end records it (`end_group`).
    pub item: Option<ClaimedItem>,
    /// How long the job had been ready when it was claimed (its pickup latency).
    pub waited: Duration,
}

/// The fields of an item that decide a verdict's transition, as read at the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedItem {
    pub project_id: i64,
    pub phase: Phase,
    pub budget: Budget,
}

/// The columns of `damascus_claim` (and of `damascus_end_group`'s claimed rows), enums
/// as text.
pub(super) const CLAIM_COLUMNS: &str =
    "job_id, claim_token, slot, item_id, phase::text as phase, attempt, runs,
    attempts_left, item_project_id, item_phase::text as item_phase, item_phase_attempts,
    item_attempts_total, item_max_attempts_per_phase, item_max_attempts_total,
    extract(epoch from now() - ready_at)::float8 as waited_secs";

/// Claims up to `max` ready jobs, each with a free global slot.
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit = off` for
/// its own transaction only): a claim the server loses in a crash is a lease that never
/// was, which the fencing already handles (the phase's keep-alive and end find another
/// token, or none, and write nothing; the job is claimable again), and the group end
/// that records the job's verdict commits durably, flushing the claim's WAL before its
/// own. The pickup saves one flush.
pub async fn claim(
    pool: &PgPool,
    worker: WorkerId,
    max: u32,
    lease: Duration,
) -> DbResult<Vec<ClaimedJob>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "select {CLAIM_COLUMNS}
         from (select set_config('synchronous_commit', 'off', true) as async) a
         cross join lateral (
             select * from damascus_claim($1, $2, $3) where a.async is not null) c"
    ))
    .bind(worker.0)
    .bind(max as i32)
    .bind(interval(lease))
    .fetch_all(pool)
    .await?;
    claimed_jobs(&rows)
}

pub(super) fn claimed_jobs(rows: &[sqlx::postgres::PgRow]) -> DbResult<Vec<ClaimedJob>> {
    rows.iter()
        .map(|row| {
            let item_id: Option<i64> = row.try_get("item_id")?;
            let phase: Option<Phase> = parse_opt_enum(row, "phase")?;
            let attempt: Option<i32> = row.try_get("attempt")?;
            Ok(ClaimedJob {
                job_id: row.try_get("job_id")?,
                claim: row.try_get("claim_token")?,
                slot: row.try_get("slot")?,
                target: match (item_id, phase, attempt) {
                    (Some(item_id), Some(phase), Some(attempt)) => Some(JobTarget {
                        item_id,
                        phase,
                        attempt,
                    }),
                    _ => None,
                },
                runs: row.try_get::<Option<i32>, _>("runs")?.unwrap_or(1),
                attempts_left: row.try_get("attempts_left")?,
                item: claimed_item(row)?,
                waited: Duration::from_secs_f64(
                    row.try_get::<Option<f64>, _>("waited_secs")?
                        .unwrap_or(0.0)
                        .max(0.0),
                ),
            })
        })
        .collect()
}

/// The `item_*` columns of `damascus_claim`'s rows.
fn claimed_item(row: &sqlx::postgres::PgRow) -> DbResult<Option<ClaimedItem>> {
    let Some(project_id) = row.try_get::<Option<i64>, _>("item_project_id")? else {
        return Ok(None);
    };
    Ok(Some(ClaimedItem {
        project_id,
        phase: parse_enum(row, "item_phase")?,
        budget: crate::transitions::budget_from_row(row, "item_")?,
    }))
}

/// How long until the next job becomes runnable (`None`: no job waits). Reads the
/// first entry of the ready jobs' index (`damascus_jobs_ready_idx`).
pub async fn next_runnable_in(pool: &PgPool) -> DbResult<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "select greatest(extract(epoch from (run_at - now())), 0)::float8
         from damascus_jobs where runs < max_runs
         order by run_at limit 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(Duration::from_secs_f64))
}
