//! The safety net behind the normal paths: the reaper (dead jobs, reservations of lost
//! claims, silent workers) and the respawn pass that gives jobless working items their
//! job. It must not end a claim a live worker holds: it takes only expired slots (never
//! waiting for a busy slot or job row) and reservations no slot names.

use damascus_core::Phase;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::end::delete_job;
use crate::error::DbResult;
use crate::parse_opt_enum;
use crate::transitions::{blocked_entry, lock_item, record_verdicts};

/// What one pass of the reaper did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Jobs whose every attempt was claimed and lost (workers died); their items are blocked.
    pub dead_jobs: u64,
    /// Reservations of lost claims, recorded as spend unknown.
    pub unreported_reservations: u64,
    /// Worker rows whose heartbeat stopped.
    pub stale_workers: u64,
    /// Items in a working phase that had no job (e.g. its queue row was deleted by hand).
    pub respawned: u64,
}

/// The safety net behind the normal paths: blocks the items of dead jobs, records the
/// reservations of claims that ended without settling them as spend, forgets workers
/// that stopped heartbeating, and gives jobless working items their job.
pub async fn reap(pool: &PgPool) -> DbResult<Reaped> {
    let mut reaped = Reaped::default();
    let candidates: Vec<Uuid> = sqlx::query_scalar(
        "select job_id from damascus_jobs where runs >= max_runs and run_at <= now()",
    )
    .fetch_all(pool)
    .await?;
    for job_id in candidates {
        if reap_dead_job(pool, job_id).await? {
            reaped.dead_jobs += 1;
        }
    }
    reaped.unreported_reservations = record_lost_reservations(pool).await?;
    // Each worker is judged by its own lease (`damascus_worker_alive`).
    reaped.stale_workers = sqlx::query(
        "delete from damascus_worker_processes
         where not damascus_worker_alive(heartbeat_at, lease_ms)",
    )
    .execute(pool)
    .await?
    .rows_affected();
    reaped.respawned = respawn_jobless(pool).await?;
    Ok(reaped)
}

/// Records as spend unknown the reservations whose claim holds no slot any more and
/// that no end settled: the claim was lost (its worker died, or its lease ran out and
/// another claim took the job). One transaction per item, which locks the item's row
/// first, the order every end takes; a claim still named by a slot is left to its end.
async fn record_lost_reservations(pool: &PgPool) -> DbResult<u64> {
    let items: Vec<i64> = sqlx::query_scalar(
        "select distinct r.item_id from budget_reservations r
         where not exists (select 1 from damascus_slots s where s.claim_token = r.claim_token)",
    )
    .fetch_all(pool)
    .await?;
    let mut recorded = 0;
    for item in items {
        let mut tx = pool.begin().await?;
        match lock_item(&mut tx, item).await {
            Ok(_) => {}
            // Its reservations went with it.
            Err(crate::error::DbError::ItemNotFound(_)) => continue,
            Err(e) => return Err(e),
        }
        let lost: Vec<Uuid> = sqlx::query_scalar(
            "select distinct r.claim_token from budget_reservations r
             where r.item_id = $1
               and not exists (select 1 from damascus_slots s where s.claim_token = r.claim_token)",
        )
        .bind(item)
        .fetch_all(&mut *tx)
        .await?;
        let why = "its claim was lost";
        recorded += crate::budget::record_unreported(&mut tx, &lost, why).await? as u64;
        tx.commit().await?;
    }
    Ok(recorded)
}

/// The channel on which a lock hand-over that passed over a busy waiter asks the
/// workers for a respawn pass (`respawn_jobless`) now instead of at the next reaper
/// round.
pub const RESPAWN_CHANNEL: &str = "damascus_respawn";

/// Asks for each item that may run (`damascus_may_run`) and has no job to be looked at
/// again, so the spawn trigger gives it its job. An item in review whose lock another
/// item holds is left out: its job comes with the lock's hand-over. Waits for a row
/// another transaction holds: it runs in a transaction of its own and holds no other
/// lock.
pub async fn respawn_jobless(pool: &PgPool) -> DbResult<u64> {
    let touched: i32 = sqlx::query_scalar(
        "select damascus_look_again(array(
            select i.id from work_items i
            where not exists (select 1 from damascus_jobs j where j.item_id = i.id)
              and damascus_may_run(i.id, i.phase, i.project_id)
              and not (i.phase = 'review' and damascus_locks_taken_by_others(i.id))))",
    )
    .fetch_one(pool)
    .await?;
    Ok(touched as u64)
}

/// Blocks the item of one dead job, in a transaction of its own. Locks in the order
/// every end of a claim uses (slot, item, queue row); it never waits for the slot or the
/// job row (a job whose slot or row is busy, its last holder may be finishing it right
/// now, is left for the next pass), and waits for the item's row like every end.
async fn reap_dead_job(pool: &PgPool, job_id: Uuid) -> DbResult<bool> {
    let mut tx = pool.begin().await?;
    let named: i64 = sqlx::query_scalar("select count(*) from damascus_slots where job_id = $1")
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
    if named > 0 {
        let expired: Option<i32> = sqlx::query_scalar(
            "select slot from damascus_slots where job_id = $1 and lease_until < now() for update skip locked",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if expired.is_none() {
            return Ok(false);
        }
    }
    let target = sqlx::query(
        "select item_id, phase::text as phase, attempt, last_error from damascus_jobs where job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    type Target = (Option<i64>, Option<Phase>, i32, Option<String>);
    let (item_id, phase, attempt, last_error): Target = match &target {
        Some(row) => (
            row.try_get("item_id")?,
            parse_opt_enum(row, "phase")?,
            row.try_get("attempt")?,
            row.try_get("last_error")?,
        ),
        None => (None, None, 1, None),
    };
    let item = match item_id {
        Some(item_id) => Some(lock_item(&mut tx, item_id).await?),
        None => None,
    };
    let still_dead: Option<Uuid> = sqlx::query_scalar(
        "select job_id from damascus_jobs
         where job_id = $1 and runs >= max_runs and run_at <= now()
         for update skip locked",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    if still_dead.is_none() {
        return Ok(false);
    }
    delete_job(&mut tx, job_id).await?;
    if let (Some(item), Some(phase)) = (item, phase) {
        if item.phase == phase {
            let question = format!(
                "{phase} of this item never finished: every attempt of its job was lost (the worker running it died or lost its lease){}. Check the workers' logs, then retry the item",
                last_error.map(|e| format!("; last error: {e}")).unwrap_or_default()
            );
            let context = format!("job {job_id}");
            let entry = blocked_entry(None, &item, attempt, &question, &context, &[]);
            record_verdicts(&mut tx, &[entry]).await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}
