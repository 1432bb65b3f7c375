//! Keeping leases alive (`damascus_keep_alive`): extends the leases of claims still
//! held. It must not end a claim or touch items; a lost claim simply drops out of the
//! answer.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::interval;
use crate::error::DbResult;

/// Extends the leases of the claims named by `claims`; returns the claims still held.
/// Commits without waiting for its WAL flush, like a claim: an extension the server
/// loses in a crash is a lease that ends sooner, which fencing handles.
pub async fn keep_alive(pool: &PgPool, claims: &[Uuid], lease: Duration) -> DbResult<Vec<Uuid>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "select k from (select set_config('synchronous_commit', 'off', true) as async) a
         cross join lateral (
             select damascus_keep_alive($1, $2) as k where a.async is not null) c",
    )
    .bind(claims)
    .bind(interval(lease))
    .fetch_all(pool)
    .await?)
}
