//! The merge queue's rows: who is queued for which repository, in what order, and what
//! the head's run is doing. Entering and leaving the queue is done by triggers
//! (`work_items_enter_merge_queue`, `work_items_leave_merge_queue`) in the transaction
//! that moves an item into or out of review; this module reads the queue and records the
//! head's progress (`mark`), which is bookkeeping for people and moves no item.

use chrono::{DateTime, Utc};
use damascus_core::MergeQueueState;
use sqlx::{PgExecutor, PgPool, Row};

use crate::error::DbResult;
use crate::parse_enum;

/// One queued item, as `damascus_merge_queue` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub repository: String,
    pub base_branch: String,
    /// 1 is the head.
    pub position: i64,
    /// How many items the queue holds.
    pub length: i64,
    pub item_id: i64,
    pub project: String,
    pub title: String,
    pub state: MergeQueueState,
    pub state_since: DateTime<Utc>,
    /// The head whose batch this item is tested in.
    pub batch_head: Option<i64>,
    pub tested_commit: Option<String>,
}

const ENTRY_SELECT: &str = "select repository, base_branch, position,
        count(*) over (partition by repository, base_branch) as length,
        item_id, project, title, state::text as state, state_since, batch_head, tested_commit
     from damascus_merge_queue";

fn entry_from_row(row: &sqlx::postgres::PgRow) -> DbResult<QueueEntry> {
    Ok(QueueEntry {
        repository: row.try_get("repository")?,
        base_branch: row.try_get("base_branch")?,
        position: row.try_get("position")?,
        length: row.try_get("length")?,
        item_id: row.try_get("item_id")?,
        project: row.try_get("project")?,
        title: row.try_get("title")?,
        state: parse_enum(row, "state")?,
        state_since: row.try_get("state_since")?,
        batch_head: row.try_get("batch_head")?,
        tested_commit: row.try_get("tested_commit")?,
    })
}

/// Every queue, each in order.
pub async fn list<'e>(db: impl PgExecutor<'e>) -> DbResult<Vec<QueueEntry>> {
    let rows = sqlx::query(&format!(
        "{ENTRY_SELECT} order by repository, base_branch, position"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(entry_from_row).collect()
}

/// Where an item stands in its queue; `None` when it is not queued.
pub async fn entry<'e>(db: impl PgExecutor<'e>, item_id: i64) -> DbResult<Option<QueueEntry>> {
    let row = sqlx::query(&format!(
        "select * from ({ENTRY_SELECT}) q where item_id = $1"
    ))
    .bind(item_id)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(entry_from_row).transpose()
}

/// The items queued behind `head` that its batch may take, in queue order, at most
/// `limit`: waiting for the queue's lock, held back by nothing else.
pub async fn followers(pool: &PgPool, head: i64, limit: i32) -> DbResult<Vec<i64>> {
    Ok(
        sqlx::query_scalar("select damascus_merge_queue_followers($1, $2)")
            .bind(head)
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}

/// Records what the head's run does now with the items of its batch (the head among
/// them). Items of an earlier batch of this head that are not named go back to
/// waiting. Items no longer queued are left out.
pub async fn mark(
    pool: &PgPool,
    head: i64,
    items: &[i64],
    state: MergeQueueState,
    tested_commit: Option<&str>,
) -> DbResult<()> {
    sqlx::query(
        "update merge_queue set
            state = case when item_id = any($2) then $3::merge_queue_state else 'waiting' end,
            state_since = case
                when item_id = any($2) and state = $3::merge_queue_state then state_since
                else now() end,
            batch_head = case when item_id = any($2) then $1 end,
            tested_commit = case when item_id = any($2) then $4 end
         where item_id = any($2) or batch_head = $1",
    )
    .bind(head)
    .bind(items)
    .bind(state.as_str())
    .bind(tested_commit)
    .execute(pool)
    .await?;
    Ok(())
}
