//! The JSON documents that read the database: an item with its history, a page of
//! items, the stats, the webhooks, the workers. The routes answer them and `damascus … --json` prints them, so a
//! script sees one shape whichever interface it uses (docs/API.md describes them).

use std::collections::BTreeMap;

use damascus_db::items::{self, ItemFilter};
use damascus_db::{events, status, DbError};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::json::{
    CostJson, EventJson, GateJson, HumanIssueJson, ItemJson, MergeQueueJson, WorkerJson,
};
use crate::webhooks::{WebhookJson, WebhookList};

/// `GET /v1/items/{id}`: the item, where it stands in its merge queue, its phase
/// changes (`attempts`), costs, events, gates and questions.
#[derive(Debug, Serialize)]
pub struct ItemDetail {
    pub item: ItemJson,
    pub merge_queue: Option<MergeQueueJson>,
    /// The `item.phase_changed` events of `events`.
    pub attempts: Vec<EventJson>,
    pub costs: Vec<CostJson>,
    pub events: Vec<EventJson>,
    pub gates: Vec<GateJson>,
    pub human_issues: Vec<HumanIssueJson>,
}

pub async fn item_detail(pool: &PgPool, id: i64) -> Result<ItemDetail, DbError> {
    let item = items::get_item(pool, id).await?;
    let (timeline, issues, costs, gates, queued) = tokio::try_join!(
        events::for_item(pool, id),
        items::human_issues_for_item(pool, id),
        items::costs_for_item(pool, id),
        items::gates_for_item(pool, id),
        damascus_db::merge_queue::entry(pool, id),
    )?;
    let attempts = timeline
        .iter()
        .filter(|e| e.kind == "item.phase_changed")
        .cloned()
        .collect();
    Ok(ItemDetail {
        item: ItemJson::from(item),
        merge_queue: queued.map(MergeQueueJson::from),
        attempts,
        costs: costs.into_iter().map(CostJson::from).collect(),
        events: timeline,
        gates: gates.into_iter().map(GateJson::from).collect(),
        human_issues: issues.into_iter().map(HumanIssueJson::from).collect(),
    })
}

/// `GET /v1/items`: the items `filter` selects, with the window it asked for.
#[derive(Debug, Serialize)]
pub struct ItemPage {
    pub items: Vec<ItemJson>,
    pub limit: i64,
    pub offset: i64,
}

pub async fn item_page(pool: &PgPool, filter: &ItemFilter) -> Result<ItemPage, DbError> {
    let list = items::list_items(pool, filter).await?;
    Ok(ItemPage {
        items: list.into_iter().map(ItemJson::from).collect(),
        limit: filter.limit,
        offset: filter.offset,
    })
}

/// `GET /v1/stats`: items per phase and project, the queue, open questions, webhook
/// deliveries, throughput and spending.
pub async fn stats(pool: &PgPool) -> Result<Value, DbError> {
    let s = status::stats(pool).await?;
    let mut per_project: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (project, phase, n) in &s.per_project_phase {
        per_project
            .entry(project.clone())
            .or_default()
            .insert(phase.to_string(), *n);
    }
    let per_phase: BTreeMap<String, i64> = s
        .overview
        .items_per_phase
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
    let hooks = damascus_db::webhooks::list(pool).await?;
    Ok(json!({
        "items_per_phase": per_phase,
        "items_per_project": per_project,
        "queue": {
            "queued": s.overview.jobs_queued,
            "running": s.overview.jobs_running,
            "retry_wait": s.overview.jobs_retry_wait,
            "dead": s.overview.jobs_dead,
            "concurrency": s.overview.concurrency,
        },
        "open_human_issues": s.overview.open_human_issues,
        "events": {
            "retrying": s.overview.events_retrying,
            "dead": s.overview.events_dead,
        },
        "webhooks": hooks.iter().map(|w| json!({
            "name": w.webhook.name,
            "pending": w.pending,
            "retrying": w.retrying,
            "dead": w.dead,
            "delivered": w.delivered,
            "oldest_undelivered_seconds": w.oldest_undelivered_secs,
        })).collect::<Vec<_>>(),
        "throughput": {
            "transitions_last_hour": s.transitions_last_hour,
            "transitions_last_day": s.transitions_last_day,
            "merged_last_hour": s.merged_last_hour,
            "merged_last_day": s.merged_last_day,
        },
        "cost_usd": { "last_hour": s.cost_last_hour_usd, "last_day": s.cost_last_day_usd },
    }))
}

/// `GET /v1/webhooks`: each webhook with its deliveries.
pub async fn webhook_list(pool: &PgPool) -> Result<WebhookList, DbError> {
    Ok(WebhookList {
        webhooks: damascus_db::webhooks::list(pool)
            .await?
            .into_iter()
            .map(WebhookJson::from)
            .collect(),
    })
}

/// The worker processes on this database, as `damascus status` lists them.
pub async fn workers(pool: &PgPool) -> Result<Vec<WorkerJson>, DbError> {
    Ok(status::workers(pool)
        .await?
        .into_iter()
        .map(WorkerJson::from)
        .collect())
}
