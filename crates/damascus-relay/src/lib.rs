//! damascus-relay: the maintenance services `damascus run` starts beside the workers.
//!
//! - `WebhookRelay` delivers every event of the outbox to the configured webhooks, at
//!   least once, in batches whose claim and `delivered_at` share one transaction; a
//!   failed delivery is retried with exponential backoff and, after `max_attempts`,
//!   parked as dead with its last error. A batch stops at its first failure, so a
//!   webhook that is down holds the batch's transaction for one timeout, not one per
//!   event. A retry goes only to the webhooks that did not take the event yet: one
//!   webhook that is down does not make the others receive every event again.
//! - `Retention` prunes delivered (or dead) events of finished items, orphaned queue
//!   payloads, and log files older than the retention age.
//!
//! Both are small named services with the same lifecycle: `start` spawns, `stop` stops
//! and waits (safe to call once the service has stopped).
//!
//! Architecture invariants: no SQL (statements are in `damascus-db::outbox`); webhook
//! URLs can hold tokens, so they are never logged beyond their host.

use std::path::PathBuf;
use std::time::Duration;

use damascus_db::outbox::{self, Delivery};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running service.
pub struct Service {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Service {
    fn spawn<F>(body: impl FnOnce(CancellationToken) -> F) -> Service
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(body(stop.clone()));
        Service { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub webhooks: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_attempts: i32,
    pub batch: i64,
}

impl RelayConfig {
    pub fn new(webhooks: Vec<String>) -> RelayConfig {
        RelayConfig {
            webhooks,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            max_attempts: 10,
            batch: 100,
        }
    }
}

/// The host of a URL, for logs and errors (paths and queries can hold tokens).
fn host_of(url: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| {
            rest.split(['/', '?'])
                .next()
                .unwrap_or_default()
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_else(|| "(webhook)".into())
}

/// The delay before delivery attempt `attempts + 1`: 2 s doubling, at most an hour.
fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 12) as u32).min(3600))
}

pub struct WebhookRelay;

impl WebhookRelay {
    pub fn start(pool: PgPool, config: RelayConfig) -> Service {
        Service::spawn(move |stop| async move {
            let http = match reqwest::Client::builder().timeout(config.timeout).build() {
                Ok(http) => http,
                Err(e) => {
                    tracing::error!(error = %e, "the webhook relay cannot build its HTTP client");
                    return;
                }
            };
            loop {
                match deliver_batch(&pool, &http, &config).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "the webhook relay failed; retrying"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(config.interval) => {}
                }
            }
        })
    }
}

/// Delivers one batch; returns how many events it handled. The batch stops at the first
/// failed delivery: the webhook is likely down, and every further try would hold the
/// batch's transaction open for another timeout. The events after it stay pending,
/// untouched, for the next batch.
pub async fn deliver_batch(
    pool: &PgPool,
    http: &reqwest::Client,
    config: &RelayConfig,
) -> Result<usize, damascus_db::DbError> {
    let mut batch = outbox::claim(pool, config.batch).await?;
    let pending = std::mem::take(&mut batch.events);
    let mut handled = 0;
    for item in &pending {
        let body = damascus_api::json::EventJson::from(item.event.clone());
        let mut failure = None;
        let mut delivered_to = Vec::new();
        for url in &config.webhooks {
            let key = outbox::webhook_key(url);
            if item.delivered_to.contains(&key) {
                continue;
            }
            let outcome = http
                .post(url)
                .header("x-damascus-event", &item.event.kind)
                .header("x-damascus-event-id", item.event.id.to_string())
                .json(&body)
                .send()
                .await;
            let error = match outcome {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("{} answered {}", host_of(url), r.status())),
                Err(e) => Some(format!("{}: {}", host_of(url), e.without_url())),
            };
            match error {
                None => delivered_to.push(key),
                Some(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let delivery = match failure {
            None => Delivery::Delivered,
            Some(error) => {
                let attempts = item.attempts + 1;
                let dead = attempts >= config.max_attempts;
                if dead {
                    tracing::error!(event = item.event.id, %error, "event undeliverable; parked as dead");
                } else {
                    tracing::warn!(event = item.event.id, %error, attempts, "event delivery failed; retrying later");
                }
                Delivery::Failed {
                    error,
                    retry_in: backoff(attempts),
                    dead,
                    delivered_to,
                }
            }
        };
        let failed = delivery != Delivery::Delivered;
        batch.record(item.event.id, &delivery).await?;
        handled += 1;
        if failed {
            break;
        }
    }
    batch.commit().await?;
    Ok(handled)
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub age: Duration,
    pub interval: Duration,
    /// Where the agents' and tests' logs are (`<data-dir>/logs`).
    pub logs_dir: PathBuf,
    /// Whether a relay delivers events (if not, every old event of a finished item goes).
    pub relay_enabled: bool,
}

pub struct Retention;

impl Retention {
    pub fn start(pool: PgPool, config: RetentionConfig) -> Service {
        Service::spawn(move |stop| async move {
            loop {
                match prune_once(&pool, &config).await {
                    Ok((pruned, files)) if pruned != outbox::Pruned::default() || files > 0 => {
                        tracing::info!(?pruned, log_files = files, "retention pruned old data")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(config.interval) => {}
                }
            }
        })
    }
}

/// One retention pass: old events and payloads, then old log files.
pub async fn prune_once(
    pool: &PgPool,
    config: &RetentionConfig,
) -> Result<(outbox::Pruned, usize), damascus_db::DbError> {
    let pruned = outbox::prune(pool, config.age, config.relay_enabled).await?;
    let dir = config.logs_dir.clone();
    let age = config.age;
    let files = tokio::task::spawn_blocking(move || prune_files(&dir, age))
        .await
        .unwrap_or(0);
    Ok((pruned, files))
}

/// Removes files under `dir` not modified for `age`, and directories left empty.
fn prune_files(dir: &std::path::Path, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            removed += prune_files(&path, age);
            let _ = std::fs::remove_dir(&path); // only succeeds when empty
        } else if meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|e| e >= age)
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_hide_paths_and_credentials() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T0/B0/secret"),
            "hooks.slack.com"
        );
        assert_eq!(
            host_of("http://user:pw@chat.local:8080/x?token=1"),
            "chat.local:8080"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }
}
