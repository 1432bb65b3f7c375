//! Pruning the event outbox. The rule for which events
//! may go lives in the database (`damascus_prune_events`): older than the retention
//! period, of a finished item, and delivered (or dead) at every registered webhook.
//! Delivery itself is `webhooks`.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::DbResult;

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
}

/// Removes events older than `age` that `damascus_prune_events` allows (item finished,
/// every webhook done with them).
pub async fn prune(pool: &PgPool, age: Duration) -> DbResult<Pruned> {
    let events: i64 = sqlx::query_scalar("select damascus_prune_events(make_interval(secs => $1))")
        .bind(age.as_secs_f64())
        .fetch_one(pool)
        .await?;
    Ok(Pruned {
        events: events as u64,
    })
}
