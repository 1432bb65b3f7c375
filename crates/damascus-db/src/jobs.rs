//! The queue's statements: worker registration and heartbeats, claiming jobs under the
//! global cap, keeping leases alive, and ending a claim (finish, retry later, release),
//! each ending in one transaction with the item change and its events.
//!
//! A claim is fenced: every way of ending it first locks the slot row that this worker
//! holds for the job. If the lease ran out and another worker took the job, the slot no
//! longer names this worker, the end is refused (`LostClaim`) and nothing is written,
//! so a job's verdict is recorded once even when its phase ran twice.

use std::time::Duration;

use damascus_core::{CostEntry, Phase, PhaseReport};
use serde_json::json;
use sqlx::postgres::types::PgInterval;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::error::DbResult;
use crate::transitions::{apply_verdict, block_item, lock_item, record_costs};
use crate::{events, parse_opt_enum};

/// A registered worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub i64);

/// A job this worker holds under a lease. Only `claim` makes one, so holding a
/// `ClaimedJob` means the claim happened.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub job_id: Uuid,
    pub slot: i32,
    /// `None` for a queue message whose item is gone; ending it discards it.
    pub target: Option<JobTarget>,
    /// How often the job has been claimed, this claim included.
    pub runs: i32,
    /// Runs left after this one.
    pub attempts_left: i32,
}

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

/// Registers a worker process and sets the global cap to `concurrency`: the cap is one
/// number for the whole database, and the last worker to start sets it.
pub async fn register_worker(
    pool: &PgPool,
    host: &str,
    pid: u32,
    concurrency: u32,
) -> DbResult<WorkerId> {
    let mut tx = pool.begin().await?;
    sqlx::query("select damascus_set_concurrency($1)")
        .bind(concurrency as i32)
        .execute(&mut *tx)
        .await?;
    let id = sqlx::query_scalar(
        "insert into damascus_worker_processes (host, pid, concurrency) values ($1, $2, $3) returning id",
    )
    .bind(host)
    .bind(pid as i32)
    .bind(concurrency as i32)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(WorkerId(id))
}

/// Marks a worker as stopping (it claims nothing more); shown in `damascus status`.
pub async fn mark_stopping(pool: &PgPool, worker: WorkerId) -> DbResult<()> {
    sqlx::query("update damascus_worker_processes set stopping = true where id = $1")
        .bind(worker.0)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn deregister_worker(pool: &PgPool, worker: WorkerId) -> DbResult<()> {
    sqlx::query("delete from damascus_worker_processes where id = $1")
        .bind(worker.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// Claims up to `max` ready jobs, each with a free global slot.
pub async fn claim(
    pool: &PgPool,
    worker: WorkerId,
    max: u32,
    lease: Duration,
) -> DbResult<Vec<ClaimedJob>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "select job_id, slot, item_id, phase::text as phase, attempt, runs, attempts_left
         from damascus_claim($1, $2, $3)",
    )
    .bind(worker.0)
    .bind(max as i32)
    .bind(interval(lease))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let item_id: Option<i64> = row.try_get("item_id")?;
            let phase: Option<Phase> = parse_opt_enum(row, "phase")?;
            let attempt: Option<i32> = row.try_get("attempt")?;
            Ok(ClaimedJob {
                job_id: row.try_get("job_id")?,
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
            })
        })
        .collect()
}

/// Extends the leases of `jobs` and records the worker's heartbeat; returns the jobs
/// this worker still holds.
pub async fn keep_alive(
    pool: &PgPool,
    worker: WorkerId,
    jobs: &[Uuid],
    lease: Duration,
) -> DbResult<Vec<Uuid>> {
    Ok(sqlx::query_scalar("select damascus_keep_alive($1, $2, $3)")
        .bind(worker.0)
        .bind(jobs)
        .bind(interval(lease))
        .fetch_all(pool)
        .await?)
}

/// How ending a claim went.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The verdict was recorded and the item moved from `from` to `to`.
    Advanced { from: Phase, to: Phase },
    /// The job will run again at the earliest after `delay`.
    RetryScheduled { delay: Duration, attempts_left: i32 },
    /// The job ran out of attempts; its item is blocked with a human issue.
    Exhausted,
    /// The job went back to the queue untouched (shutdown).
    Released,
    /// The item had moved on (cancelled, moved by hand) or was gone; the result was dropped.
    Superseded,
    /// Another worker holds the job now; nothing was written.
    LostClaim,
}

/// Locks this worker's slot for the job; `false` when the claim was lost.
async fn lock_claim(conn: &mut PgConnection, worker: WorkerId, job: &ClaimedJob) -> DbResult<bool> {
    let held: Option<i32> = sqlx::query_scalar(
        "select slot from damascus_slots where job_id = $1 and worker_id = $2 for update",
    )
    .bind(job.job_id)
    .bind(worker.0)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(held.is_some())
}

/// Frees the job's slot and deletes the job (its `damascus_jobs` row goes with it).
async fn delete_job(conn: &mut PgConnection, job: Uuid) -> DbResult<()> {
    sqlx::query("select damascus_free_slot($1)")
        .bind(job)
        .execute(&mut *conn)
        .await?;
    sqlx::query("select mq_delete(array[$1])")
        .bind(job)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the job and nudges its item, so that the spawn trigger gives an item that
/// is still in a working phase the job it should have.
async fn supersede(conn: &mut PgConnection, job: &ClaimedJob) -> DbResult<Ended> {
    delete_job(conn, job.job_id).await?;
    if let Some(target) = job.target {
        sqlx::query("update work_items set updated_at = now() where id = $1")
            .bind(target.item_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ended::Superseded)
}

/// Records a pass, fail or needs-human verdict: deletes the job, moves the item, opens
/// a human issue if it blocks, writes the events; the trigger spawns the next job. One
/// transaction.
pub async fn finish(
    pool: &PgPool,
    worker: WorkerId,
    job: &ClaimedJob,
    report: &PhaseReport,
) -> DbResult<Ended> {
    let mut tx = pool.begin().await?;
    if !lock_claim(&mut tx, worker, job).await? {
        return Ok(Ended::LostClaim);
    }
    let Some(target) = job.target else {
        let ended = supersede(&mut tx, job).await?;
        tx.commit().await?;
        return Ok(ended);
    };
    let item = lock_item(&mut tx, target.item_id).await?;
    if item.phase != target.phase {
        let ended = supersede(&mut tx, job).await?;
        tx.commit().await?;
        return Ok(ended);
    }
    // Order matters: the job goes first, so that the phase change spawns the next one.
    delete_job(&mut tx, job.job_id).await?;
    let transition = apply_verdict(&mut tx, &item, target.attempt, &report.verdict).await?;
    record_costs(
        &mut tx,
        item.id,
        target.phase,
        target.attempt,
        &report.costs,
    )
    .await?;
    tx.commit().await?;
    Ok(Ended::Advanced {
        from: item.phase,
        to: transition.phase,
    })
}

/// Puts a job that hit a transient error back in the queue after `delay`, or, when it
/// has no attempts left, blocks its item with a human issue that says what failed.
pub async fn retry_later(
    pool: &PgPool,
    worker: WorkerId,
    job: &ClaimedJob,
    reason: &str,
    costs: &[CostEntry],
    delay: Duration,
) -> DbResult<Ended> {
    let mut tx = pool.begin().await?;
    if !lock_claim(&mut tx, worker, job).await? {
        return Ok(Ended::LostClaim);
    }
    let Some(target) = job.target else {
        let ended = supersede(&mut tx, job).await?;
        tx.commit().await?;
        return Ok(ended);
    };
    let item = lock_item(&mut tx, target.item_id).await?;
    if item.phase != target.phase {
        let ended = supersede(&mut tx, job).await?;
        tx.commit().await?;
        return Ok(ended);
    }
    record_costs(&mut tx, item.id, target.phase, target.attempt, costs).await?;
    let attempts_left: i32 = sqlx::query_scalar("select attempts from mq_msgs where id = $1")
        .bind(job.job_id)
        .fetch_one(&mut *tx)
        .await?;
    if attempts_left <= 0 {
        delete_job(&mut tx, job.job_id).await?;
        let question = format!(
            "{} of this item failed with a transient error on each of its {} runs; last error: {reason}. Fix the cause, then retry the item",
            target.phase, job.runs
        );
        block_item(&mut tx, &item, &question, &format!("job {}", job.job_id)).await?;
        tx.commit().await?;
        return Ok(Ended::Exhausted);
    }
    sqlx::query("update mq_msgs set attempt_at = now() + $2 where id = $1")
        .bind(job.job_id)
        .bind(interval(delay))
        .execute(&mut *tx)
        .await?;
    sqlx::query("update damascus_jobs set last_error = $2 where job_id = $1")
        .bind(job.job_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    sqlx::query("select damascus_free_slot($1)")
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    events::record(
        &mut tx,
        Some(item.id),
        Some(item.project_id),
        "job.retry_scheduled",
        &json!({
            "phase": target.phase,
            "reason": reason,
            "delay_ms": delay.as_millis() as u64,
            "attempts_left": attempts_left,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Ended::RetryScheduled {
        delay,
        attempts_left,
    })
}

/// Gives a job back untouched, runnable at once, with the attempt it used returned:
/// the worker is shutting down, the job did nothing wrong.
pub async fn release(pool: &PgPool, worker: WorkerId, job: &ClaimedJob) -> DbResult<Ended> {
    let mut tx = pool.begin().await?;
    if !lock_claim(&mut tx, worker, job).await? {
        return Ok(Ended::LostClaim);
    }
    sqlx::query("update mq_msgs set attempt_at = now(), attempts = attempts + 1 where id = $1")
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update damascus_jobs set runs = greatest(runs - 1, 0) where job_id = $1")
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    // Freeing the slot also wakes the other workers: this job is runnable now.
    sqlx::query("select damascus_free_slot($1)")
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ended::Released)
}

/// How long until the next job becomes runnable (`None`: no job waits). Reads the
/// first entry of the queue's attempt_at index.
pub async fn next_runnable_in(pool: &PgPool) -> DbResult<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "select greatest(extract(epoch from (m.attempt_at - now())), 0)::float8
         from mq_msgs m
         where m.channel_name = damascus_job_channel() and m.channel_args = ''
           and m.id != uuid_nil() and not mq_uuid_exists(m.after_message_id)
           and m.attempts > 0
         order by m.attempt_at limit 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(Duration::from_secs_f64))
}

/// What one pass of the reaper did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Jobs whose every attempt was claimed and lost (workers died); their items are blocked.
    pub dead_jobs: u64,
    /// Worker rows whose heartbeat stopped.
    pub stale_workers: u64,
    /// Items in a working phase that had no job (e.g. its queue row was deleted by hand).
    pub respawned: u64,
}

/// The safety net behind the normal paths: blocks the items of dead jobs, forgets
/// workers that stopped heartbeating, and gives jobless working items their job.
pub async fn reap(pool: &PgPool, stale_after: Duration) -> DbResult<Reaped> {
    let mut reaped = Reaped::default();
    let mut tx = pool.begin().await?;
    // SKIP LOCKED: two reapers split the dead jobs between them instead of waiting.
    let dead = sqlx::query(
        "select m.id, dj.item_id, dj.phase::text as phase, dj.attempt, dj.last_error
         from mq_msgs m
         left join damascus_jobs dj on dj.job_id = m.id
         left join damascus_slots s on s.job_id = m.id
         where m.channel_name = damascus_job_channel() and m.id != uuid_nil()
           and m.attempts <= 0 and m.attempt_at <= now()
           and (s.slot is null or s.lease_until < now())
         for update of m skip locked",
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &dead {
        let job_id: Uuid = row.try_get("id")?;
        let item_id: Option<i64> = row.try_get("item_id")?;
        let phase: Option<Phase> = parse_opt_enum(row, "phase")?;
        delete_job(&mut tx, job_id).await?;
        reaped.dead_jobs += 1;
        let (Some(item_id), Some(phase)) = (item_id, phase) else {
            continue;
        };
        let item = lock_item(&mut tx, item_id).await?;
        if item.phase != phase {
            continue;
        }
        let last_error: Option<String> = row.try_get("last_error")?;
        let question = format!(
            "{phase} of this item never finished: every attempt of its job was lost (the worker running it died or lost its lease){}. Check the workers' logs, then retry the item",
            last_error.map(|e| format!("; last error: {e}")).unwrap_or_default()
        );
        block_item(&mut tx, &item, &question, &format!("job {job_id}")).await?;
    }
    reaped.stale_workers =
        sqlx::query("delete from damascus_worker_processes where heartbeat_at < now() - $1")
            .bind(interval(stale_after))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    reaped.respawned = sqlx::query(
        "update work_items i set updated_at = now()
         where i.phase in ('spec', 'build', 'review')
           and not exists (select 1 from damascus_jobs j where j.item_id = i.id)",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(reaped)
}
