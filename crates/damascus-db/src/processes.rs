//! The process groups running phases started (agents, tests), per host, so that a
//! worker on the same host can kill the groups a dead worker left behind. A row lives
//! while its process runs; one whose claim's lease ran out is an orphan.

use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::DbResult;

/// A process group a phase started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProcess {
    pub process_group: i32,
    pub claim: Uuid,
    pub item_id: i64,
    /// The group leader's start time in clock ticks since boot.
    pub leader_start_ticks: i64,
}

/// Records that `process.claim` runs `process.process_group` on `host`.
pub async fn record<'e>(db: impl PgExecutor<'e>, host: &str, process: &JobProcess) -> DbResult<()> {
    sqlx::query(
        "insert into damascus_job_processes (process_group, host, claim_token, item_id, leader_start_ticks)
         values ($1, $2, $3, $4, $5)
         on conflict (host, process_group) do update
         set claim_token = excluded.claim_token, item_id = excluded.item_id,
             leader_start_ticks = excluded.leader_start_ticks, started_at = now()",
    )
    .bind(process.process_group)
    .bind(host)
    .bind(process.claim)
    .bind(process.item_id)
    .bind(process.leader_start_ticks)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets a process group that ended (or was killed).
pub async fn forget<'e>(db: impl PgExecutor<'e>, host: &str, process_group: i32) -> DbResult<()> {
    sqlx::query("delete from damascus_job_processes where host = $1 and process_group = $2")
        .bind(host)
        .bind(process_group)
        .execute(db)
        .await?;
    Ok(())
}

/// The process groups on `host` whose claim no longer holds a live lease: their worker
/// died (or lost the claim, and stops its phases) while they ran.
pub async fn orphans<'e>(db: impl PgExecutor<'e>, host: &str) -> DbResult<Vec<JobProcess>> {
    let rows = sqlx::query(
        "select p.process_group, p.claim_token, p.item_id, p.leader_start_ticks
         from damascus_job_processes p
         where p.host = $1
           and not exists (select 1 from damascus_slots s
                           where s.claim_token = p.claim_token and s.lease_until > now())",
    )
    .bind(host)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JobProcess {
                process_group: row.try_get("process_group")?,
                claim: row.try_get("claim_token")?,
                item_id: row.try_get("item_id")?,
                leader_start_ticks: row.try_get("leader_start_ticks")?,
            })
        })
        .collect()
}
