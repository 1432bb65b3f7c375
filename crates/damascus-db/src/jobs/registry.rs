//! Worker processes: registering one (and setting the global cap), its heartbeat,
//! marking it stopping, and deregistering it. Touches only `damascus_worker_processes`
//! and the cap's settings; it claims nothing and must not touch jobs, slots or items.

use std::time::Duration;

use sqlx::PgPool;

use super::WorkerId;
use crate::error::DbResult;

/// What a worker process says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub host: String,
    pub pid: u32,
    pub lease: Duration,
}

/// A registered worker and the global cap in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: WorkerId,
    pub concurrency: u32,
}

/// Registers a worker process. With `concurrency`, it also sets the global cap (one
/// number for the whole database: the last worker that names one sets it); without,
/// the cap stays as it is.
pub async fn register_worker(
    pool: &PgPool,
    info: &WorkerInfo,
    concurrency: Option<u32>,
) -> DbResult<Registered> {
    let mut tx = pool.begin().await?;
    if let Some(concurrency) = concurrency {
        sqlx::query("select damascus_set_concurrency($1)")
            .bind(concurrency as i32)
            .execute(&mut *tx)
            .await?;
    }
    let cap: i32 = sqlx::query_scalar("select concurrency from damascus_queue_settings")
        .fetch_one(&mut *tx)
        .await?;
    let id = sqlx::query_scalar(
        "insert into damascus_worker_processes (host, pid, concurrency, lease_ms) values ($1, $2, $3, $4) returning id",
    )
    .bind(&info.host)
    .bind(info.pid as i32)
    .bind(cap)
    .bind(info.lease.as_millis() as i64)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Registered {
        id: WorkerId(id),
        concurrency: cap.max(1) as u32,
    })
}

/// Records that the worker is alive. A worker the reaper took for dead (silent for
/// four leases, e.g. across a network split) gets its row back under the same id, so
/// its later claims and slots keep working.
pub async fn heartbeat(pool: &PgPool, worker: &Registered, info: &WorkerInfo) -> DbResult<()> {
    let updated =
        sqlx::query("update damascus_worker_processes set heartbeat_at = now() where id = $1")
            .bind(worker.id.0)
            .execute(pool)
            .await?
            .rows_affected();
    if updated == 0 {
        tracing::warn!(
            worker = worker.id.0,
            "worker row was reaped while alive; restoring it"
        );
        sqlx::query(
            "insert into damascus_worker_processes (id, host, pid, concurrency, lease_ms)
             overriding system value values ($1, $2, $3, $4, $5) on conflict (id) do nothing",
        )
        .bind(worker.id.0)
        .bind(&info.host)
        .bind(info.pid as i32)
        .bind(worker.concurrency as i32)
        .bind(info.lease.as_millis() as i64)
        .execute(pool)
        .await?;
    }
    Ok(())
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
