//! Operator controls, each one transaction with its event: cancel an item, retry a
//! blocked one with a fresh budget, pause and resume a project.

use damascus_core::Phase;
use serde_json::json;
use sqlx::PgPool;

use crate::error::{DbError, DbResult};
use crate::events;

/// The channel a cancel notifies; workers answer by checking their claims at once.
pub const CANCEL_CHANNEL: &str = "damascus_cancel";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub item_id: i64,
    pub from: Phase,
    /// True when a worker was running the item's phase: it stops within moments.
    pub was_running: bool,
}

/// How often a cancel starts again when a claim changed the item's job between its
/// look and its locks; each round waits only for the ends it found under way.
const CANCEL_ROUNDS: usize = 20;

/// Cancels an item in any phase but merged or cancelled. The move to `cancelled` ends
/// its job in the same transaction (`work_items_end_jobs_when_finished`): the job is
/// deleted, its slot freed, and what its run reserved recorded as spend unknown; a
/// worker running it finds its claim gone when the NOTIFY arrives and kills the phase's
/// processes.
pub async fn cancel(pool: &PgPool, item_id: i64, by: &str) -> DbResult<Cancelled> {
    for _ in 0..CANCEL_ROUNDS {
        let mut tx = pool.begin().await?;
        let Some(locked) = lock_item_and_its_job(&mut tx, item_id).await? else {
            // A claim took the job between the look and the locks: look again.
            tx.rollback().await?;
            continue;
        };
        let (item, was_running) = locked;
        if item.phase.is_final() {
            return Err(DbError::Conflict(format!(
                "item {item_id} is already {}, so there is nothing to cancel; only items that are not merged or cancelled can be cancelled",
                item.phase
            )));
        }
        sqlx::query("update work_items set phase = 'cancelled', resume_phase = null where id = $1")
            .bind(item_id)
            .execute(&mut *tx)
            .await?;
        dismiss_open_question(&mut tx, item_id, by).await?;
        events::record(
            &mut tx,
            Some(item_id),
            Some(item.project_id),
            "item.cancelled",
            &json!({ "from": item.phase, "by": by, "was_running": was_running }),
        )
        .await?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(CANCEL_CHANNEL)
            .bind(item_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Cancelled {
            item_id,
            from: item.phase,
            was_running,
        });
    }
    Err(DbError::Conflict(format!(
        "item {item_id}'s job changed hands {CANCEL_ROUNDS} times while it was being cancelled; cancel it again"
    )))
}

/// Locks, in the queue's order, the slot that holds the item's job (if one does), the
/// item, and its job's row; returns the item and whether its job runs under a live
/// lease. `None` when the job's slot is not the one locked (a claim or a phase's end
/// changed it after the first look): the caller starts again.
///
/// Why this serialises with a phase's end: an end locks its slot and the item, and in
/// the same statement may spawn the item's next job and claim it. The slot is locked
/// first here, so a cancel that arrives during that end waits for it; with the item's
/// row locked, no job can be spawned for it, and with its job row locked, no claim can
/// take the job (claims skip locked rows), so the slot seen after the locks is the
/// job's slot until commit. If it is not the slot locked first, the locks are given
/// back and the cancel looks again.
async fn lock_item_and_its_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    item_id: i64,
) -> DbResult<Option<(crate::transitions::LockedItem, bool)>> {
    let job_slot = "select s.slot from damascus_jobs j
                    join damascus_slots s on s.job_id = j.job_id
                    where j.item_id = $1";
    let seen: Option<i32> = sqlx::query_scalar(job_slot)
        .bind(item_id)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(slot) = seen {
        sqlx::query("select slot from damascus_slots where slot = $1 for update")
            .bind(slot)
            .execute(&mut **tx)
            .await?;
    }
    let item = crate::transitions::lock_item(tx, item_id).await?;
    sqlx::query("select 1 from damascus_jobs where item_id = $1 for update")
        .bind(item_id)
        .execute(&mut **tx)
        .await?;
    let now: Option<(i32, bool)> = sqlx::query_as(
        "select s.slot, s.lease_until >= now() from damascus_jobs j
         join damascus_slots s on s.job_id = j.job_id
         where j.item_id = $1",
    )
    .bind(item_id)
    .fetch_optional(&mut **tx)
    .await?;
    if now.map(|(slot, _)| slot) != seen {
        return Ok(None);
    }
    Ok(Some((item, now.is_some_and(|(_, live)| live))))
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

/// Locks a project's row FOR UPDATE to pause or resume it. That lock conflicts with the
/// KEY SHARE every spawn of the project takes (`damascus_spawn_job`), so a pause (or
/// resume) and a spawn serialise: either the spawn sees the project as the pause left
/// it, or the pause's look at the project's jobs (items) sees the spawn's.
async fn lock_project_to_pause(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
) -> DbResult<i64> {
    sqlx::query_scalar("select id from projects where name = $1 for update")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| DbError::ProjectNotFound(name.to_owned()))
}

/// Pauses a project: its queued jobs are withdrawn and no new ones are spawned;
/// phases running now finish. Returns how many queued jobs were withdrawn.
pub async fn pause_project(pool: &PgPool, name: &str) -> DbResult<u64> {
    let mut tx = pool.begin().await?;
    // Every slot first, waiting for each: a claim in flight holds the slots it is
    // taking until it commits, so once they are all held here no claim is under way,
    // and none can start until the pause commits (a claim skips locked slots). A claim
    // that committed before is a phase that started before the pause. Slots before the
    // project row, as everywhere (a group end locks its slots, then its spawn trigger
    // the project). A pause is rare and holds them for a few statements.
    sqlx::query("select slot from damascus_slots order by slot for update")
        .execute(&mut *tx)
        .await?;
    let id = lock_project_to_pause(&mut tx, name).await?;
    sqlx::query("update projects set paused = true where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Queued only: a job any slot names (running, or a lapsed claim) is left to its
    // holder's end, which respawns nothing for a paused project. Deleting only jobs no
    // slot names touches no slot row, so this never locks a queue row before a slot.
    // No claim is under way (the slots are held), so SKIP LOCKED passes over only a job
    // a cancel is deleting.
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
    let id = lock_project_to_pause(&mut tx, name).await?;
    sqlx::query("update projects set paused = false where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
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
    let item = crate::transitions::lock_item(&mut tx, item_id).await?;
    let (project_id, phase) = (item.project_id, item.phase);
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
