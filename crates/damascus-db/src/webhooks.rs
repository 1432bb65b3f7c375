//! Webhooks as rows, and their deliveries: one row per (webhook, event), written in the
//! event's transaction by a trigger (`damascus_events_fan_out`), each with a state of
//! its own (pending, retrying, delivered, dead). A relay takes one webhook at a time
//! (`FOR NO KEY UPDATE SKIP LOCKED` on its row, so several relays share the webhooks
//! and never send one webhook's events out of order) and records each outcome in the
//! batch's transaction: a crash before the commit leaves them pending, so delivery is
//! at least once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::error::{DbError, DbResult};
use crate::events::Event;

/// A webhook to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub name: String,
    pub url: String,
    /// `whsec_` and the base64 of the signing key.
    pub secret: String,
    /// The event kinds it receives; `None`: every kind.
    pub event_kinds: Option<Vec<String>>,
    pub max_attempts: i32,
}

/// A registered webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub secret: String,
    pub event_kinds: Option<Vec<String>>,
    pub max_attempts: i32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a token and the secret signs deliveries: neither is shown.
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("event_kinds", &self.event_kinds)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// A webhook and how its deliveries stand.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSummary {
    pub webhook: Webhook,
    pub pending: i64,
    pub retrying: i64,
    pub dead: i64,
    pub delivered: i64,
    /// How long the oldest event it has not taken yet has waited.
    pub oldest_undelivered_secs: Option<f64>,
    pub last_error: Option<String>,
}

const WEBHOOK_COLUMNS: &str = "w.id, w.name, w.url, w.secret, w.event_kinds, w.max_attempts";

fn webhook_from_row(row: &sqlx::postgres::PgRow) -> DbResult<Webhook> {
    Ok(Webhook {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        event_kinds: row.try_get("event_kinds")?,
        max_attempts: row.try_get("max_attempts")?,
    })
}

/// Registers a webhook; a name already taken is `WebhookExists`.
pub async fn add(pool: &PgPool, new: &NewWebhook) -> DbResult<Webhook> {
    let row = sqlx::query(&format!(
        "insert into webhooks as w (name, url, secret, event_kinds, max_attempts)
         values ($1, $2, $3, $4, $5) returning {WEBHOOK_COLUMNS}"
    ))
    .bind(&new.name)
    .bind(&new.url)
    .bind(&new.secret)
    .bind(&new.event_kinds)
    .bind(new.max_attempts)
    .fetch_one(pool)
    .await
    .map_err(
        |e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("webhooks_name_key") => DbError::WebhookExists(new.name.clone()),
            _ => DbError::from(e),
        },
    )?;
    webhook_from_row(&row)
}

/// Registers `url` under `name` unless a webhook with that URL exists (the webhooks a
/// process is given in its environment); returns whether it added one.
pub async fn ensure_url(pool: &PgPool, name: &str, url: &str, secret: &str) -> DbResult<bool> {
    let added = sqlx::query(
        "insert into webhooks (name, url, secret)
         select $1, $2, $3 where not exists (select 1 from webhooks where url = $2)
         on conflict (name) do nothing",
    )
    .bind(name)
    .bind(url)
    .bind(secret)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(added > 0)
}

/// Every webhook with its deliveries' counts, by name.
pub async fn list(pool: &PgPool) -> DbResult<Vec<WebhookSummary>> {
    let rows = sqlx::query(&format!(
        "select {WEBHOOK_COLUMNS}, v.pending, v.retrying, v.dead, v.delivered,
                extract(epoch from v.oldest_undelivered_age)::float8 as oldest_undelivered_secs,
                v.last_error
         from webhooks w join damascus_webhooks v on v.name = w.name
         order by w.name"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(WebhookSummary {
                webhook: webhook_from_row(row)?,
                pending: row.try_get("pending")?,
                retrying: row.try_get("retrying")?,
                dead: row.try_get("dead")?,
                delivered: row.try_get("delivered")?,
                oldest_undelivered_secs: row.try_get("oldest_undelivered_secs")?,
                last_error: row.try_get("last_error")?,
            })
        })
        .collect()
}

pub async fn get(pool: &PgPool, name: &str) -> DbResult<Webhook> {
    let row = sqlx::query(&format!(
        "select {WEBHOOK_COLUMNS} from webhooks w where w.name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| DbError::WebhookNotFound(name.to_owned()))?;
    webhook_from_row(&row)
}

/// Removes a webhook and its deliveries.
pub async fn remove(pool: &PgPool, name: &str) -> DbResult<()> {
    let removed = sqlx::query("delete from webhooks where name = $1")
        .bind(name)
        .execute(pool)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(DbError::WebhookNotFound(name.to_owned()));
    }
    Ok(())
}

/// Which deliveries a redrive sends again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Redrive {
    /// Every dead one.
    Dead,
    /// Every dead or delivered one of an event created at or after this time.
    Since(DateTime<Utc>),
    /// This event's.
    Event(i64),
}

/// Sends deliveries of webhook `name` again: they become pending with a fresh attempt
/// count. A `Since` or `Event` redrive also covers events the webhook never had (it was
/// registered later). Returns how many deliveries it queued.
pub async fn redrive(pool: &PgPool, name: &str, which: Redrive) -> DbResult<u64> {
    let webhook = get(pool, name).await?;
    let (since, event): (Option<DateTime<Utc>>, Option<i64>) = match which {
        Redrive::Dead => (None, None),
        Redrive::Since(at) => (Some(at), None),
        Redrive::Event(id) => (None, Some(id)),
    };
    if let Some(id) = event {
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from events_outbox where id = $1)")
                .bind(id)
                .fetch_one(pool)
                .await?;
        if !exists {
            return Err(DbError::EventNotFound(id));
        }
    }
    let queued = sqlx::query(
        "insert into webhook_deliveries (webhook_id, event_id)
         select $1, e.id from events_outbox e
         where ($2::timestamptz is null and $3::bigint is null
                and exists (select 1 from webhook_deliveries d
                            where d.webhook_id = $1 and d.event_id = e.id and d.state = 'dead'))
            or e.created_at >= $2 or e.id = $3
         on conflict (webhook_id, event_id) do update
         set state = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
         where webhook_deliveries.state in ('dead', 'delivered')",
    )
    .bind(webhook.id)
    .bind(since)
    .bind(event)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(queued)
}

/// One webhook's deliveries, claimed in order; dropping the batch without `commit`
/// leaves them as they were.
pub struct Batch {
    tx: Transaction<'static, Postgres>,
    pub webhook: Webhook,
    pub deliveries: Vec<PendingDelivery>,
}

/// An event the webhook has not taken yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDelivery {
    pub event: Event,
    /// Attempts before this one.
    pub attempts: i32,
    /// Whether its next attempt is due now (an earlier failure backs it off).
    pub due: bool,
}

/// The ids of every webhook with deliveries to make.
pub async fn with_undelivered(pool: &PgPool) -> DbResult<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "select w.id from webhooks w
         where exists (select 1 from webhook_deliveries d
                       where d.webhook_id = w.id and d.state in ('pending', 'retrying'))
         order by w.id",
    )
    .fetch_all(pool)
    .await?)
}

/// Claims up to `limit` of webhook `webhook_id`'s undelivered events, in the order of
/// the transactions that wrote them. Each delivery is a row of its own, so an event
/// whose transaction commits late is still delivered, just after later ones: unlike
/// the event stream, the relay does not wait for older transactions (which may be
/// another application's, anywhere on the server). `None` when another relay holds
/// the webhook.
pub async fn claim(pool: &PgPool, webhook_id: i64, limit: i64) -> DbResult<Option<Batch>> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(&format!(
        "select {WEBHOOK_COLUMNS} from webhooks w where w.id = $1 for no key update skip locked"
    ))
    .bind(webhook_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let webhook = webhook_from_row(&row)?;
    let rows = sqlx::query(
        "select e.id, e.item_id, e.kind, e.payload, e.created_at, d.attempts,
                d.next_attempt_at <= now() as due
         from webhook_deliveries d join events_outbox e on e.id = d.event_id
         where d.webhook_id = $1 and d.state in ('pending', 'retrying')
         order by e.txid, e.id
         limit $2",
    )
    .bind(webhook_id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let deliveries = rows
        .iter()
        .map(|row| {
            Ok(PendingDelivery {
                event: crate::events::event_from_row(row)?,
                attempts: row.try_get("attempts")?,
                due: row.try_get("due")?,
            })
        })
        .collect::<DbResult<Vec<_>>>()?;
    Ok(Some(Batch {
        tx,
        webhook,
        deliveries,
    }))
}

/// What one attempt to deliver an event to a webhook came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// Failed: tried again after `retry_in`, or dead when out of attempts.
    Failed {
        status: Option<u16>,
        error: String,
        retry_in: Duration,
    },
}

impl Batch {
    /// Records an attempt; returns whether the delivery is now dead.
    pub async fn record(&mut self, event_id: i64, outcome: &Outcome) -> DbResult<bool> {
        let (status, error, retry_in, delivered) = match outcome {
            Outcome::Delivered { status } => (Some(*status), None, Duration::ZERO, true),
            Outcome::Failed {
                status,
                error,
                retry_in,
            } => (*status, Some(error.as_str()), *retry_in, false),
        };
        let dead: bool = sqlx::query_scalar(
            "update webhook_deliveries d
             set attempts = d.attempts + 1,
                 state = case when $3 then 'delivered'
                              when d.attempts + 1 >= $4 then 'dead'
                              else 'retrying' end::webhook_delivery_state,
                 last_status = $5, last_error = $6,
                 next_attempt_at = now() + make_interval(secs => $7),
                 updated_at = now()
             where d.webhook_id = $1 and d.event_id = $2
             returning d.state = 'dead'",
        )
        .bind(self.webhook.id)
        .bind(event_id)
        .bind(delivered)
        .bind(self.webhook.max_attempts)
        .bind(status.map(i32::from))
        .bind(error)
        .bind(retry_in.as_secs_f64())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(dead)
    }

    pub async fn commit(self) -> DbResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
