//! Delivering the event outbox and pruning what is old. The relay holds one transaction
//! per batch: it claims pending events (`FOR UPDATE SKIP LOCKED`, so several relays
//! share the work without sending one event twice at once), delivers them, and records
//! each outcome before committing. A crash before the commit leaves the events pending:
//! delivery is at least once.
//!
//! Each webhook's success is kept per event (`event_webhook_deliveries`) until the
//! event reached them all, so a retry after one webhook failed goes only to those
//! still missing it. Webhooks are named by `webhook_key`, never by their URL.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::error::DbResult;
use crate::events::Event;

/// A batch of claimed events; dropping it without `commit` releases them.
pub struct Batch {
    tx: Transaction<'static, Postgres>,
    pub events: Vec<PendingEvent>,
}

/// A claimed event, how many deliveries it had before, and the webhooks (by
/// `webhook_key`) that already took it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub event: Event,
    pub attempts: i32,
    pub delivered_to: Vec<String>,
}

/// The name under which a webhook's deliveries are kept: the first 16 bytes of the
/// SHA-256 of its URL, in hex. Stable across restarts, and no token in it.
pub fn webhook_key(url: &str) -> String {
    Sha256::digest(url.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn claim(pool: &PgPool, limit: i64) -> DbResult<Batch> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "select e.id, e.item_id, e.kind, e.payload, e.created_at, e.delivery_attempts,
                array(select d.webhook from event_webhook_deliveries d where d.event_id = e.id)
                    as delivered_to
         from events_outbox e
         where e.delivered_at is null and e.dead_at is null and e.next_delivery_at <= now()
         order by e.next_delivery_at, e.id limit $1
         for update of e skip locked",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let events = rows
        .iter()
        .map(|row| {
            Ok(PendingEvent {
                event: crate::events::event_from_row(row)?,
                attempts: row.try_get("delivery_attempts")?,
                delivered_to: row.try_get("delivered_to")?,
            })
        })
        .collect::<DbResult<Vec<_>>>()?;
    Ok(Batch { tx, events })
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every webhook has it now.
    Delivered,
    /// A webhook failed; try again after `retry_in`, or park it as dead when `dead`.
    /// `delivered_to`: the webhooks (by `webhook_key`) that took it this time, which
    /// the retry skips.
    Failed {
        error: String,
        retry_in: Duration,
        dead: bool,
        delivered_to: Vec<String>,
    },
}

impl Batch {
    pub async fn record(&mut self, event_id: i64, delivery: &Delivery) -> DbResult<()> {
        let conn: &mut PgConnection = &mut self.tx;
        match delivery {
            Delivery::Delivered => {
                sqlx::query(
                    "update events_outbox set delivered_at = now(), delivery_attempts = delivery_attempts + 1,
                        last_delivery_error = null where id = $1",
                )
                .bind(event_id)
                .execute(&mut *conn)
                .await?;
                // Each webhook's own record is no longer needed once all have it.
                sqlx::query("delete from event_webhook_deliveries where event_id = $1")
                    .bind(event_id)
                    .execute(conn)
                    .await?;
            }
            Delivery::Failed {
                error,
                retry_in,
                dead,
                delivered_to,
            } => {
                sqlx::query(
                    "insert into event_webhook_deliveries (event_id, webhook)
                     select $1, unnest($2::text[]) on conflict do nothing",
                )
                .bind(event_id)
                .bind(delivered_to)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "update events_outbox set delivery_attempts = delivery_attempts + 1, last_delivery_error = $2,
                        next_delivery_at = now() + make_interval(secs => $3),
                        dead_at = case when $4 then now() end
                     where id = $1",
                )
                .bind(event_id)
                .bind(error)
                .bind(retry_in.as_secs_f64())
                .bind(*dead)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    pub async fn commit(self) -> DbResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub orphan_payloads: u64,
}

/// Removes events older than `age` whose delivery is over (delivered or dead, or every
/// event when no relay delivers them) and whose item is finished (or gone), and queue
/// payloads whose message is gone. Timelines of live items are kept whole.
pub async fn prune(pool: &PgPool, age: Duration, relay_enabled: bool) -> DbResult<Pruned> {
    let events = sqlx::query(
        "delete from events_outbox e
         where e.created_at < now() - make_interval(secs => $1)
           and (not $2 or e.delivered_at is not null or e.dead_at is not null)
           and not exists (select 1 from work_items i where i.id = e.item_id and i.phase not in ('merged', 'cancelled'))",
    )
    .bind(age.as_secs_f64())
    .bind(relay_enabled)
    .execute(pool)
    .await?
    .rows_affected();
    let orphan_payloads = sqlx::query(
        "delete from mq_payloads p where not exists (select 1 from mq_msgs m where m.id = p.id)",
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Pruned {
        events,
        orphan_payloads,
    })
}
