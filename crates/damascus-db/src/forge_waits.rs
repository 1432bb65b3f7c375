//! Rate-limit deadlines per forge host and token (`forge_waits`): when a forge says
//! "come back at T", the phase that was told records T here, and every worker process
//! reads it before calling that forge with that token. A deadline only ever moves
//! later, so two processes told different times keep the later one.
//!
//! Must not touch: jobs (the waiting job's run-at is set by `jobs::defer`) or forges.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::DbResult;

/// A forge's deadline still ahead.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ForgeWait {
    pub host: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// The deadline of `forge` (host and token fingerprint) if it is still ahead.
pub async fn active<'e>(db: impl PgExecutor<'e>, forge: &str) -> DbResult<Option<ForgeWait>> {
    Ok(sqlx::query_as(
        "select host, until, reason from forge_waits where forge = $1 and until > now()",
    )
    .bind(forge)
    .fetch_optional(db)
    .await?)
}

/// Records that `forge` asked to be left alone until `until`; returns the deadline in
/// force (the later of this one and one already recorded).
pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    forge: &str,
    host: &str,
    until: DateTime<Utc>,
    reason: &str,
) -> DbResult<DateTime<Utc>> {
    Ok(sqlx::query_scalar(
        "insert into forge_waits (forge, host, until, reason) values ($1, $2, $3, $4)
         on conflict (forge) do update
         set until = greatest(forge_waits.until, excluded.until),
             reason = case when excluded.until >= forge_waits.until
                           then excluded.reason else forge_waits.reason end,
             host = excluded.host, recorded_at = now()
         returning until",
    )
    .bind(forge)
    .bind(host)
    .bind(until)
    .bind(reason)
    .fetch_one(db)
    .await?)
}

/// Every deadline still ahead, soonest first, for `status` and the API.
pub async fn all_active<'e>(db: impl PgExecutor<'e>) -> DbResult<Vec<ForgeWait>> {
    Ok(sqlx::query_as(
        "select host, until, reason from forge_waits where until > now() order by until",
    )
    .fetch_all(db)
    .await?)
}
