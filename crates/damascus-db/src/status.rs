//! What `damascus status` shows: items per phase, the queue by state, live workers,
//! running jobs, open questions. Read-only; it reads the same views (`damascus_queue`,
//! `damascus_workers`) a person reads in psql.

use damascus_core::Phase;
use sqlx::{PgPool, Row};

use crate::error::DbResult;
use crate::parse_enum;

#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Every phase, in order, with its item count (zero included).
    pub items_per_phase: Vec<(Phase, i64)>,
    pub projects: i64,
    /// Jobs waiting for a free slot.
    pub jobs_queued: i64,
    /// Jobs a worker runs now, under a live lease.
    pub jobs_running: i64,
    /// Jobs waiting out a retry backoff.
    pub jobs_retry_wait: i64,
    /// Jobs with no attempts left, about to block their items.
    pub jobs_dead: i64,
    /// The global cap on running phases.
    pub concurrency: i32,
    pub open_human_issues: i64,
    /// Items in a working phase with no job because a gate of theirs is closed (a
    /// dependency not merged, a spec not approved, a lock held by another item).
    pub waiting_on_gate: i64,
    /// Events the webhook relay failed to deliver at least once and retries.
    pub events_retrying: i64,
    /// Events the webhook relay gave up on (their last error is in the outbox).
    pub events_dead: i64,
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
    let row = sqlx::query(
        "select
            (select count(*) from projects) as projects,
            (select concurrency from damascus_queue_settings) as concurrency,
            count(*) filter (where q.state = 'queued') as queued,
            count(*) filter (where q.state = 'running') as running,
            count(*) filter (where q.state = 'retry_wait') as retry_wait,
            count(*) filter (where q.state = 'dead') as dead,
            (select count(*) from human_issues where status = 'open') as open_issues,
            (select count(*) from work_items w
              where w.phase not in ('merged', 'blocked', 'cancelled')
                and not exists (select 1 from damascus_jobs j where j.item_id = w.id)
                and exists (select 1 from coordination_gates g
                            where g.item_id = w.id and g.opened_at is null)) as waiting_on_gate,
            (select count(*) from webhook_deliveries where state = 'retrying') as events_retrying,
            (select count(*) from webhook_deliveries where state = 'dead') as events_dead
         from damascus_queue q",
    )
    .fetch_one(pool)
    .await?;
    Ok(Overview {
        items_per_phase,
        projects: row.try_get("projects")?,
        jobs_queued: row.try_get("queued")?,
        jobs_running: row.try_get("running")?,
        jobs_retry_wait: row.try_get("retry_wait")?,
        jobs_dead: row.try_get("dead")?,
        concurrency: row.try_get("concurrency")?,
        open_human_issues: row.try_get("open_issues")?,
        waiting_on_gate: row.try_get("waiting_on_gate")?,
        events_retrying: row.try_get("events_retrying")?,
        events_dead: row.try_get("events_dead")?,
    })
}

/// A worker process, as `damascus_workers` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub id: i64,
    pub host: String,
    pub pid: i32,
    pub concurrency: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub alive: bool,
    pub stopping: bool,
    pub running: i64,
}

pub async fn workers(pool: &PgPool) -> DbResult<Vec<WorkerRow>> {
    let rows = sqlx::query(
        "select id, host, pid, concurrency, started_at, heartbeat_at, alive, stopping, running
         from damascus_workers order by id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(WorkerRow {
                id: row.try_get("id")?,
                host: row.try_get("host")?,
                pid: row.try_get("pid")?,
                concurrency: row.try_get("concurrency")?,
                started_at: row.try_get("started_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
                alive: row.try_get("alive")?,
                stopping: row.try_get("stopping")?,
                running: row.try_get("running")?,
            })
        })
        .collect()
}

/// A job that is running now.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub item_id: Option<i64>,
    pub project: Option<String>,
    pub phase: Option<Phase>,
    pub attempt: Option<i32>,
    pub worker: String,
    pub claimed_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn running_jobs(pool: &PgPool) -> DbResult<Vec<RunningJob>> {
    let rows = sqlx::query(
        "select item_id, project, phase::text as phase, attempt,
                coalesce(worker_host || ':' || worker_pid, '(worker gone)') as worker, claimed_at
         from damascus_queue where state = 'running' order by claimed_at",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(RunningJob {
                item_id: row.try_get("item_id")?,
                project: row.try_get("project")?,
                phase: crate::parse_opt_enum(row, "phase")?,
                attempt: row.try_get("attempt")?,
                worker: row.try_get("worker")?,
                claimed_at: row.try_get("claimed_at")?,
            })
        })
        .collect()
}

/// A named lock an item holds, and how many items in review wait for it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLock {
    pub name: String,
    pub item_id: i64,
    pub acquired_at: chrono::DateTime<chrono::Utc>,
    pub waiting: i64,
}

pub async fn held_locks(pool: &PgPool) -> DbResult<Vec<HeldLock>> {
    let rows = sqlx::query(
        "select l.name, l.item_id, l.acquired_at,
                (select count(*) from coordination_gates g join work_items i on i.id = g.item_id
                 where g.kind = 'lock' and g.lock_name = l.name and g.opened_at is null
                   and i.phase = 'review') as waiting
         from named_locks l
         -- A merge queue's lock is shown as its queue (merge_queue::list).
         where l.name not like 'merge-queue %'
         order by l.name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(HeldLock {
                name: row.try_get("name")?,
                item_id: row.try_get("item_id")?,
                acquired_at: row.try_get("acquired_at")?,
                waiting: row.try_get("waiting")?,
            })
        })
        .collect()
}

/// Jobs per project, phase and state (queued, retry_wait, running, dead).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGroup {
    pub project: String,
    pub phase: String,
    pub state: String,
    pub jobs: i64,
}

pub async fn queue_groups(pool: &PgPool) -> DbResult<Vec<QueueGroup>> {
    let rows = sqlx::query(
        "select coalesce(project, '(no item)') as project, coalesce(phase::text, '-') as phase, state,
                count(*) as jobs
         from damascus_queue group by 1, 2, 3 order by 1, 2, 3",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(QueueGroup {
                project: row.try_get("project")?,
                phase: row.try_get("phase")?,
                state: row.try_get("state")?,
                jobs: row.try_get("jobs")?,
            })
        })
        .collect()
}

/// Counts for `GET /v1/stats`: items per project and phase, the queue, and what moved
/// and what was spent in the last hour and day.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub per_project_phase: Vec<(String, Phase, i64)>,
    pub overview: Overview,
    pub transitions_last_hour: i64,
    pub transitions_last_day: i64,
    pub merged_last_hour: i64,
    pub merged_last_day: i64,
    pub cost_last_hour_usd: f64,
    pub cost_last_day_usd: f64,
}

pub async fn stats(pool: &PgPool) -> DbResult<Stats> {
    let rows = sqlx::query(
        "select p.name as project, i.phase::text as phase, count(*) as items
         from work_items i join projects p on p.id = i.project_id
         group by p.name, i.phase order by p.name, i.phase",
    )
    .fetch_all(pool)
    .await?;
    let per_project_phase = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get("project")?,
                parse_enum(row, "phase")?,
                row.try_get("items")?,
            ))
        })
        .collect::<DbResult<Vec<_>>>()?;
    let row = sqlx::query(
        "select
            count(*) filter (where created_at > now() - interval '1 hour') as t_hour,
            count(*) as t_day,
            count(*) filter (where created_at > now() - interval '1 hour' and payload->>'to' = 'merged') as m_hour,
            count(*) filter (where payload->>'to' = 'merged') as m_day,
            (select coalesce(sum(usd), 0)::float8 from cost_ledger where created_at > now() - interval '1 hour') as c_hour,
            (select coalesce(sum(usd), 0)::float8 from cost_ledger where created_at > now() - interval '1 day') as c_day
         from events_outbox
         where kind = 'item.phase_changed' and created_at > now() - interval '1 day'",
    )
    .fetch_one(pool)
    .await?;
    Ok(Stats {
        per_project_phase,
        overview: overview(pool).await?,
        transitions_last_hour: row.try_get("t_hour")?,
        transitions_last_day: row.try_get("t_day")?,
        merged_last_hour: row.try_get("m_hour")?,
        merged_last_day: row.try_get("m_day")?,
        cost_last_hour_usd: row.try_get("c_hour")?,
        cost_last_day_usd: row.try_get("c_day")?,
    })
}
