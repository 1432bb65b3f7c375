//! Operator controls, each one transaction with its event: cancel an item, retry a
//! blocked one with a fresh budget, pause and resume a project.

use damascus_core::Phase;
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::error::{DbError, DbResult};
use crate::{events, parse_enum};

/// The channel a cancel notifies; workers answer by checking their claims at once.
pub const CANCEL_CHANNEL: &str = "damascus_cancel";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub item_id: i64,
    pub from: Phase,
    /// True when a worker was running the item's phase: it stops within moments.
    pub was_running: bool,
}

/// Locks the item's row for this transaction: its project and phase.
async fn lock_item(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    item_id: i64,
) -> DbResult<(i64, Phase)> {
    let row = sqlx::query(
        "select project_id, phase::text as phase from work_items where id = $1 for update",
    )
    .bind(item_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(DbError::ItemNotFound(item_id))?;
    Ok((row.try_get("project_id")?, parse_enum(&row, "phase")?))
}

/// Cancels an item in any phase but merged or cancelled. Its job is deleted in the same
/// transaction; a worker running it loses its claim and kills the phase's processes.
pub async fn cancel(pool: &PgPool, item_id: i64, by: &str) -> DbResult<Cancelled> {
    let mut tx = pool.begin().await?;
    // Lock order as everywhere: the slot (through the job) before the item.
    let job: Option<(uuid::Uuid, bool)> = sqlx::query_as(
        "select j.job_id, exists (select 1 from damascus_slots s where s.job_id = j.job_id and s.lease_until >= now())
         from damascus_jobs j where j.item_id = $1",
    )
    .bind(item_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((job_id, _)) = job {
        sqlx::query("select slot from damascus_slots where job_id = $1 for update")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
    }
    let (project_id, from) = lock_item(&mut tx, item_id).await?;
    if from.is_final() {
        return Err(DbError::Conflict(format!(
            "item {item_id} is already {from}, so there is nothing to cancel; only items that are not merged or cancelled can be cancelled"
        )));
    }
    if let Some((job_id, _)) = job {
        crate::jobs::delete_job(&mut tx, job_id).await?;
    }
    sqlx::query("update work_items set phase = 'cancelled', resume_phase = null where id = $1")
        .bind(item_id)
        .execute(&mut *tx)
        .await?;
    dismiss_open_question(&mut tx, item_id, by).await?;
    let was_running = job.is_some_and(|(_, running)| running);
    events::record(
        &mut tx,
        Some(item_id),
        Some(project_id),
        "item.cancelled",
        &json!({ "from": from, "by": by, "was_running": was_running }),
    )
    .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(CANCEL_CHANNEL)
        .bind(item_id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Cancelled {
        item_id,
        from,
        was_running,
    })
}

/// Closes an item's open question without an answer (the item was cancelled or retried).
async fn dismiss_open_question(
    conn: &mut sqlx::PgConnection,
    item_id: i64,
    by: &str,
) -> DbResult<()> {
    sqlx::query(
        "update human_issues set status = 'dismissed', resolved_at = now(), answered_by = $2
         where item_id = $1 and status = 'open'",
    )
    .bind(item_id)
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sends a blocked item back into the phase it left with a fresh attempt budget; its
/// open question is dismissed. The spawn trigger queues its job.
pub async fn retry(pool: &PgPool, item_id: i64, by: &str) -> DbResult<Phase> {
    let mut tx = pool.begin().await?;
    let item = crate::transitions::lock_item_to_resume(&mut tx, item_id).await?;
    let project_id = item.project_id;
    let phase = item.phase;
    if phase == Phase::Blocked && item.left.is_some() {
        dismiss_open_question(&mut tx, item_id, by).await?;
    }
    let Some(resumed) = crate::transitions::resume_blocked(
        &mut tx,
        item_id,
        &item,
        damascus_core::Unblock::Retried,
    )
    .await?
    else {
        let instead = if phase.is_final() {
            "it is finished; to do the work again, ingest the story as a new item"
        } else {
            "it is still working: wait for its verdict, or cancel it"
        };
        return Err(DbError::Conflict(format!(
            "item {item_id} is {phase}, not blocked; only blocked items can be retried ({instead})"
        )));
    };
    let resume = resumed.phase;
    events::record(
        &mut tx,
        Some(item_id),
        Some(project_id),
        "item.retried",
        &json!({ "to": resume, "by": by }),
    )
    .await?;
    tx.commit().await?;
    Ok(resume)
}

/// Pauses a project: its queued jobs are withdrawn and no new ones are spawned;
/// phases running now finish. Returns how many queued jobs were withdrawn.
pub async fn pause_project(pool: &PgPool, name: &str) -> DbResult<u64> {
    let mut tx = pool.begin().await?;
    let id: i64 =
        sqlx::query_scalar("update projects set paused = true where name = $1 returning id")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DbError::ProjectNotFound(name.to_owned()))?;
    // Queued only: a job any slot names (running, or a lapsed claim) is left to its
    // holder's end, which respawns nothing for a paused project. Deleting only jobs no
    // slot names touches no slot row, so this never locks a queue row before a slot.
    // SKIP LOCKED: a job being claimed right now is treated as running.
    let withdrawn: Vec<uuid::Uuid> = sqlx::query_scalar(
        "select j.job_id from damascus_jobs j
         join work_items i on i.id = j.item_id
         where i.project_id = $1
           and not exists (select 1 from damascus_slots s where s.job_id = j.job_id)
         for update of j skip locked",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    if !withdrawn.is_empty() {
        sqlx::query("delete from damascus_jobs where job_id = any($1)")
            .bind(&withdrawn)
            .execute(&mut *tx)
            .await?;
    }
    events::record(
        &mut tx,
        None,
        Some(id),
        "project.paused",
        &json!({ "project": name, "withdrawn_jobs": withdrawn.len() }),
    )
    .await?;
    tx.commit().await?;
    Ok(withdrawn.len() as u64)
}

/// Resumes a project: its items in working phases get their jobs again.
pub async fn resume_project(pool: &PgPool, name: &str) -> DbResult<u64> {
    let mut tx = pool.begin().await?;
    let id: i64 =
        sqlx::query_scalar("update projects set paused = false where name = $1 returning id")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DbError::ProjectNotFound(name.to_owned()))?;
    // SKIP LOCKED: an item locked right now is being finished or answered, and that
    // change itself runs the spawn trigger; waiting for it could deadlock with a merge
    // that opens gates.
    let touched: i32 = sqlx::query_scalar(
        "select damascus_look_again(array(
            select id from work_items
            where project_id = $1 and damascus_may_run(id, phase, project_id)
            order by id for update skip locked))",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let touched = touched as u64;
    events::record(
        &mut tx,
        None,
        Some(id),
        "project.resumed",
        &json!({ "project": name, "items": touched }),
    )
    .await?;
    tx.commit().await?;
    Ok(touched)
}

/// Approves an item's spec: its approval gate opens, and the gate trigger queues its
/// build. Refused when the item has no closed approval gate.
pub async fn approve(pool: &PgPool, item_id: i64, by: &str) -> DbResult<()> {
    let mut tx = pool.begin().await?;
    let (project_id, phase) = lock_item(&mut tx, item_id).await?;
    if phase.is_final() {
        return Err(DbError::Conflict(format!(
            "item {item_id} is {phase}, so there is nothing to approve; approve items in spec that wait for approval"
        )));
    }
    let opened = sqlx::query(
        "update coordination_gates set opened_at = now(), opened_by = $2
         where item_id = $1 and kind = 'approval' and opened_at is null",
    )
    .bind(item_id)
    .bind(by)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if opened == 0 {
        let approved_by: Option<Option<String>> = sqlx::query_scalar(
            "select opened_by from coordination_gates where item_id = $1 and kind = 'approval'",
        )
        .bind(item_id)
        .fetch_optional(&mut *tx)
        .await?;
        return Err(DbError::Conflict(match approved_by {
            Some(by) => format!(
                "item {item_id} (in {phase}) was already approved by {}; nothing more to approve",
                by.as_deref().unwrap_or("someone")
            ),
            None => format!(
                "item {item_id} (in {phase}) waits for no approval; approvals are needed only in projects added with --require-approval"
            ),
        }));
    }
    events::record(
        &mut tx,
        Some(item_id),
        Some(project_id),
        "item.approved",
        &json!({ "by": by }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
