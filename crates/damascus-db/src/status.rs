//! The numbers `damascus status` shows: items per phase, jobs in the queue, open
//! questions. Read-only, and cheap enough to run every few seconds.

use damascus_core::Phase;
use sqlx::{PgPool, Row};

use crate::error::DbResult;
use crate::parse_enum;

#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Every phase, in order, with its item count (zero included).
    pub items_per_phase: Vec<(Phase, i64)>,
    pub projects: i64,
    /// Queue rows whose time has come: waiting for a worker.
    pub jobs_ready: i64,
    /// Queue rows whose `attempt_at` lies ahead: held by a worker's lease or waiting
    /// out a retry delay (the queue engine tells these apart once it tracks claims).
    pub jobs_leased_or_delayed: i64,
    pub open_human_issues: i64,
}

pub async fn overview(pool: &PgPool) -> DbResult<Overview> {
    let counted = sqlx::query(
        "select phase::text as phase, count(*) as items from work_items group by phase",
    )
    .fetch_all(pool)
    .await?;
    let mut items_per_phase: Vec<(Phase, i64)> = Phase::ALL.iter().map(|p| (*p, 0)).collect();
    for row in &counted {
        let phase: Phase = parse_enum(row, "phase")?;
        let items: i64 = row.try_get("items")?;
        if let Some(slot) = items_per_phase.iter_mut().find(|(p, _)| *p == phase) {
            slot.1 = items;
        }
    }
    // The nil-UUID row is sqlxmq's sentinel, not a job.
    let row = sqlx::query(
        "select
            (select count(*) from projects) as projects,
            (select count(*) from mq_msgs where id <> uuid_nil() and attempt_at <= now()) as ready,
            (select count(*) from mq_msgs where id <> uuid_nil() and attempt_at > now()) as later,
            (select count(*) from human_issues where status = 'open') as open_issues",
    )
    .fetch_one(pool)
    .await?;
    Ok(Overview {
        items_per_phase,
        projects: row.try_get("projects")?,
        jobs_ready: row.try_get("ready")?,
        jobs_leased_or_delayed: row.try_get("later")?,
        open_human_issues: row.try_get("open_issues")?,
    })
}
