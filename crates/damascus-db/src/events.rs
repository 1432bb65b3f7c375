//! The event outbox: one row per transition and notable event, written in the same
//! transaction as the change it reports, read by relays and the item timeline.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Row};

use crate::error::DbResult;

/// An outbox event; its serde form is the Event JSON of the API, the SSE stream and
/// webhook deliveries (one serializer for all three).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub id: i64,
    pub item_id: Option<i64>,
    pub kind: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// Reads a row selected as `id, item_id, kind, payload, created_at`.
pub(crate) fn event_from_row(row: &sqlx::postgres::PgRow) -> DbResult<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        item_id: row.try_get("item_id")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Appends an event. Takes a connection, not a pool, so that it always joins the
/// caller's transaction.
pub async fn record(
    conn: &mut PgConnection,
    item_id: Option<i64>,
    project_id: Option<i64>,
    kind: &str,
    payload: &Value,
) -> DbResult<i64> {
    let id = sqlx::query_scalar(
        "insert into events_outbox (item_id, project_id, kind, payload) values ($1, $2, $3, $4) returning id",
    )
    .bind(item_id)
    .bind(project_id)
    .bind(kind)
    .bind(payload)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// An item's events, oldest first: its timeline.
pub async fn for_item<'e>(db: impl PgExecutor<'e>, item_id: i64) -> DbResult<Vec<Event>> {
    let rows = sqlx::query(
        "select id, item_id, kind, payload, created_at from events_outbox where item_id = $1 order by id",
    )
    .bind(item_id)
    .fetch_all(db)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Events after the event `after_id` (0: from the start), for following what happens.
/// The order has no gaps: an event is handed out only once every transaction older
/// than its own has ended, in the order of the transactions that wrote them (then of
/// their ids), so an event that commits late still comes after the cursor.
pub async fn after<'e>(db: impl PgExecutor<'e>, after_id: i64, limit: i64) -> DbResult<Vec<Event>> {
    let rows = sqlx::query(
        "select id, item_id, kind, payload, created_at from damascus_events_after($1, $2::int)",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// The cursor for reading only what happens from now on with `after` (0 when there is
/// no event).
pub async fn latest_id<'e>(db: impl PgExecutor<'e>) -> DbResult<i64> {
    Ok(sqlx::query_scalar("select damascus_events_head()")
        .fetch_one(db)
        .await?)
}

#[cfg(test)]
mod vocabulary_tests {
    /// Every event kind the code or the migrations write is in the vocabulary webhooks
    /// filter on, so a filter can name it.
    #[test]
    fn every_kind_written_is_in_the_vocabulary() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let families = [
            "item",
            "job",
            "human_issue",
            "merge_queue",
            "project",
            "webhook",
        ];
        let mut seen = std::collections::BTreeSet::new();
        // Module directories (e.g. `jobs/`) are walked too.
        let mut dirs: Vec<_> = ["migrations", "crates/damascus-db/src"]
            .iter()
            .map(|dir| root.join(dir))
            .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(path).unwrap();
                for quote in ['"', '\''] {
                    for family in families {
                        let opening = format!("{quote}{family}.");
                        for (at, _) in text.match_indices(&opening) {
                            let rest = &text[at + opening.len()..];
                            let end = rest
                                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                                .unwrap_or(rest.len());
                            if end > 0 && rest[end..].starts_with(quote) {
                                seen.insert(format!("{family}.{}", &rest[..end]));
                            }
                        }
                    }
                }
            }
        }
        assert!(seen.contains("item.phase_changed"), "{seen:?}");
        for kind in &seen {
            assert!(
                damascus_core::webhook::EVENT_KINDS.contains(&kind.as_str()),
                "{kind} is written but missing from damascus_core::webhook::EVENT_KINDS"
            );
        }
    }
}
