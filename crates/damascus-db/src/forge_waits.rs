//! Rate-limit deadlines per forge host and token (`forge_waits`): when a forge says
//! "come back at T", the phase that was told records T here, and every worker process
//! reads it before calling that forge with that token. A deadline only ever moves
//! later, so two processes told different times keep the later one.
//!
//! Writes of one token take turns here too (`take_write_turn`): each takes the next
//! turn, a gap after the last one taken by any process, so that a forge that asks for
//! writes a second apart per token sees that from a whole deployment.
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

/// Takes the next write turn of `forge`: `gap` after the last turn taken by any
/// process, or now if that is later. Returns how long to wait for it.
pub async fn take_write_turn<'e>(
    db: impl PgExecutor<'e>,
    forge: &str,
    gap: std::time::Duration,
) -> DbResult<std::time::Duration> {
    let gap = sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(gap.as_micros()).unwrap_or(i64::MAX),
    };
    let wait: f64 = sqlx::query_scalar(
        "insert into forge_write_turns as t (forge, last_turn_at) values ($1, clock_timestamp())
         on conflict (forge) do update
         set last_turn_at = greatest(t.last_turn_at + $2, clock_timestamp())
         returning greatest(extract(epoch from (last_turn_at - clock_timestamp())), 0)::float8",
    )
    .bind(forge)
    .bind(gap)
    .fetch_one(db)
    .await?;
    Ok(std::time::Duration::from_secs_f64(wait))
}
