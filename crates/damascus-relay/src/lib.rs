//! damascus-relay: the maintenance services `damascus run` starts beside the workers.
//!
//! - `WebhookRelay` delivers the outbox's events to the registered webhooks (rows of
//!   `webhooks`), signed the Standard Webhooks way (`signature`), at least once. Each
//!   webhook has its own deliveries and its own batch, all webhooks at once, so one
//!   that is down delays only itself; within a webhook events go in order, and a
//!   failed delivery holds the ones after it until its retry (exponential backoff
//!   with jitter) succeeds or, after the webhook's `max_attempts`, it is dead until a
//!   redrive.
//! - `Retention` prunes what `damascus_prune_events` allows (old events of finished
//!   items that every webhook is done with), and log files
//!   older than the retention age.
//!
//! Both are small named services with the same lifecycle: `start` spawns, `stop` stops
//! and waits (safe to call once the service has stopped).
//!
//! Architecture invariants: no SQL (statements are in `damascus-db::webhooks` and
//! `outbox`); webhook URLs can hold tokens, so they are never logged beyond their host.

use std::path::PathBuf;
use std::time::Duration;

pub mod register;
pub mod signature;

use damascus_db::outbox;
use damascus_db::webhooks::{self, Outcome};
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
    pub interval: Duration,
    pub timeout: Duration,
    /// Deliveries one webhook's batch takes at most.
    pub batch: i64,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            batch: 100,
        }
    }
}

/// The host of a URL, for logs and errors (paths and queries can hold tokens).
pub fn host_of(url: &str) -> String {
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

/// The delay before the attempt after `attempts` failed ones: 2 s doubling, at most an
/// hour, with up to a fifth taken off at random so that deliveries that failed together
/// do not all come back at once.
fn backoff(attempts: i32) -> Duration {
    let full = 2u64.saturating_pow(attempts.clamp(1, 12) as u32).min(3600) as f64;
    Duration::from_secs_f64(full * (1.0 - rand::random::<f64>() * 0.2))
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
                match deliver_round(&pool, &http, &config).await {
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

/// One round: every webhook with deliveries to make gets one batch, all at once, so a
/// webhook that is down delays only itself. Returns how many deliveries succeeded.
pub async fn deliver_round(
    pool: &PgPool,
    http: &reqwest::Client,
    config: &RelayConfig,
) -> Result<usize, damascus_db::DbError> {
    let mut rounds = tokio::task::JoinSet::new();
    for webhook in webhooks::with_undelivered(pool).await? {
        let (pool, http, batch) = (pool.clone(), http.clone(), config.batch);
        rounds.spawn(async move { deliver_webhook(&pool, &http, webhook, batch).await });
    }
    let mut delivered = 0;
    let mut failure = None;
    while let Some(done) = rounds.join_next().await {
        match done {
            Ok(Ok(n)) => delivered += n,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => tracing::error!(error = %e, "a webhook's delivery task failed"),
        }
    }
    match failure {
        Some(e) if delivered == 0 => Err(e),
        _ => Ok(delivered),
    }
}

/// Delivers one webhook's batch in order, signed; stops at the first delivery not due
/// yet or failing, so the webhook receives its events in order. Returns how many it
/// took.
pub async fn deliver_webhook(
    pool: &PgPool,
    http: &reqwest::Client,
    webhook_id: i64,
    limit: i64,
) -> Result<usize, damascus_db::DbError> {
    let Some(mut batch) = webhooks::claim(pool, webhook_id, limit).await? else {
        return Ok(0);
    };
    let key = match signature::parse_secret(&batch.webhook.secret) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(webhook = batch.webhook.name, error = %e, "cannot sign this webhook's deliveries; replace it");
            return Ok(0);
        }
    };
    let pending = std::mem::take(&mut batch.deliveries);
    let mut delivered = 0;
    for delivery in pending.iter().take_while(|d| d.due) {
        let retry_in = backoff(delivery.attempts + 1);
        let outcome = post(http, &batch.webhook, &key, &delivery.event, retry_in).await;
        let failed = !matches!(outcome, Outcome::Delivered { .. });
        let dead = batch.record(delivery.event.id, &outcome).await?;
        let label = match (&outcome, dead) {
            (Outcome::Delivered { .. }, _) => "delivered",
            (Outcome::Failed { .. }, false) => "failed",
            (Outcome::Failed { .. }, true) => "dead",
        };
        damascus_metrics::webhook_delivery(&batch.webhook.name, label);
        if let Outcome::Failed { error, .. } = &outcome {
            if dead {
                tracing::error!(webhook = batch.webhook.name, event = delivery.event.id, %error, "delivery given up; redrive it with: damascus webhook redrive NAME");
            } else {
                tracing::warn!(webhook = batch.webhook.name, event = delivery.event.id, %error, attempts = delivery.attempts + 1, "delivery failed; retrying later");
            }
        }
        if failed {
            break;
        }
        delivered += 1;
    }
    batch.commit().await?;
    Ok(delivered)
}

/// One signed POST of `event` to `webhook` (Standard Webhooks: `webhook-id` is the
/// event id, which doubles as the receiver's idempotency key); a failure is tried again
/// after `retry_in`.
pub async fn post(
    http: &reqwest::Client,
    webhook: &webhooks::Webhook,
    key: &[u8],
    event: &damascus_db::events::Event,
    retry_in: Duration,
) -> Outcome {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let msg_id = format!("msg_{}", event.id);
    let signed = signature::sign(key, &msg_id, chrono::Utc::now().timestamp(), &body);
    let sent = http
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("webhook-id", &signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", &signed.signature)
        .header("x-damascus-event", &event.kind)
        .body(body)
        .send()
        .await;
    let failed = |status: Option<u16>, error: String| Outcome::Failed {
        status,
        error,
        retry_in,
    };
    match sent {
        Ok(r) if r.status().is_success() => Outcome::Delivered {
            status: r.status().as_u16(),
        },
        Ok(r) => failed(
            Some(r.status().as_u16()),
            format!("{} answered {}", host_of(&webhook.url), r.status()),
        ),
        Err(e) => failed(
            None,
            format!("{}: {}", host_of(&webhook.url), e.without_url()),
        ),
    }
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub age: Duration,
    pub interval: Duration,
    /// Where the agents' and tests' logs are (`<data-dir>/logs`).
    pub logs_dir: PathBuf,
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

/// One retention pass: old events, then old log files.
pub async fn prune_once(
    pool: &PgPool,
    config: &RetentionConfig,
) -> Result<(outbox::Pruned, usize), damascus_db::DbError> {
    let pruned = outbox::prune(pool, config.age).await?;
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
    fn backoff_grows_with_jitter_and_caps() {
        let within = |attempts: i32, full: f64| {
            let got = backoff(attempts).as_secs_f64();
            assert!(got <= full && got >= full * 0.8, "{attempts}: {got}");
        };
        within(1, 2.0);
        within(3, 8.0);
        within(40, 3600.0);
    }
}
