//! The LISTEN side of the wake-up: one connection that listens on the queue channel and
//! pokes the claim loop (and on the cancel and respawn channels, poking their tasks). After a lost connection it reconnects with capped backoff and
//! pokes the loop once more, since notifications sent meanwhile are gone.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel the spawn trigger and freed slots notify (`damascus_job_channel()`).
pub const QUEUE_CHANNEL: &str = "damascus_jobs";
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on the queue channel (pokes `wake`), the cancel channel (pokes `check`) and
/// the respawn channel (pokes `respawn`).
pub async fn listen(
    pool: PgPool,
    wake: Arc<Notify>,
    check: Arc<Notify>,
    respawn: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        // Register before the claim loop's next query, so no notification is missed.
        let mut listener = match connect(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain::Chain(&e), "queue listener cannot connect; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        wake.notify_one();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(n)) if n.channel() == damascus_db::operator::CANCEL_CHANNEL => check.notify_one(),
                    Ok(Some(n)) if n.channel() == damascus_db::jobs::RESPAWN_CHANNEL => respawn.notify_one(),
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => {
                        tracing::warn!("queue listener lost its connection; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain::Chain(&e), "queue listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([
            QUEUE_CHANNEL,
            damascus_db::operator::CANCEL_CHANNEL,
            damascus_db::jobs::RESPAWN_CHANNEL,
        ])
        .await?;
    Ok(listener)
}
