//! Maintenance: the services a worker runs beside its phases for the whole queue, not
//! for its own claims. Today that is the `Reaper`: every `reap_interval` it blocks the
//! items of dead jobs, forgets stale workers and gives jobless working items their job
//! (`jobs::reap`), then kills what dead workers left running on this host
//! (`orphans::sweep`); whenever a lock hand-over asks for it, it runs the respawn pass
//! alone (`jobs::respawn_jobless`).
//!
//! Each service has the lifecycle of the relay's (`damascus-relay`): `start` spawns it,
//! `stop` stops it and waits, and is safe once it has stopped by itself. The queue does
//! not depend on the relay, so the small `Service` shape is repeated here.
//!
//! Must not touch: this worker's own claims, the running phases or the claim loop; the
//! reaper only goes through `damascus-db::jobs`, whose statements are safe for any
//! number of workers to run at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use damascus_db::jobs;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::QueueConfig;

/// A running maintenance service.
pub(crate) struct Service {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Service {
    fn spawn<F>(body: impl FnOnce(CancellationToken) -> F) -> Service
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(body(stop.clone()));
        Service { stop, task }
    }

    /// Stops the service and waits for it; a service that has stopped already (or
    /// panicked) just returns.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The reaper and its respawn pass.
pub(crate) struct Reaper {
    pool: PgPool,
    interval: Duration,
}

impl Reaper {
    /// Runs the reaper every `config.reap_interval` (the first pass at once), and its
    /// respawn pass alone whenever `respawn` is poked. A pass can wait for a row another
    /// transaction holds (the respawn is asked for exactly then); stopping does not wait
    /// for it.
    pub(crate) fn start(pool: PgPool, config: &QueueConfig, respawn: Arc<Notify>) -> Service {
        let reaper = Reaper {
            pool,
            interval: config.reap_interval,
        };
        Service::spawn(move |stop| async move {
            let mut next_reap = tokio::time::Instant::now();
            loop {
                let respawn_only = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(next_reap) => false,
                    _ = respawn.notified() => true,
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reaper.pass(respawn_only) => {}
                }
                if !respawn_only {
                    next_reap = tokio::time::Instant::now() + reaper.interval;
                }
            }
        })
    }

    async fn pass(&self, respawn_only: bool) {
        if respawn_only {
            match jobs::respawn_jobless(&self.pool).await {
                Ok(0) => {}
                Ok(respawned) => tracing::info!(respawned, "respawned after a lock hand-over"),
                Err(e) => tracing::warn!(error = %crate::error_chain::Chain(&e), "respawn failed"),
            }
            return;
        }
        match jobs::reap(&self.pool).await {
            Ok(reaped) if reaped != jobs::Reaped::default() => tracing::info!(?reaped, "reaper"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %crate::error_chain::Chain(&e), "reaper failed"),
        }
        if let Err(e) = crate::orphans::sweep(&self.pool).await {
            tracing::warn!(error = %crate::error_chain::Chain(&e), "cannot look for process groups dead workers left running");
        }
    }
}
