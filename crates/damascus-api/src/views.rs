//! The JSON documents that read the database: an item with its history, a page of
//! items, the projects, the merge queues, the stats, the webhooks, the workers. The routes answer them and `damascus … --json` prints them, so a
//! script sees one shape whichever interface it uses (docs/API.md describes them).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use damascus_core::Phase;
use damascus_db::events::Event;
use damascus_db::items::{self, CostLine, ItemFilter, ItemSort};
use damascus_db::{events, projects, status, DbError};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::json::{
    CostJson, EventJson, GateJson, HumanIssueJson, ItemJson, MergeQueueJson, ProjectJson,
    WorkerJson,
};
use crate::webhooks::{WebhookJson, WebhookList};

/// `GET /v1/items/{id}`: the item, where it stands in its merge queue, its phase
/// changes (`attempts`), how long it spent in each phase, its budget, costs, events,
/// gates and questions.
#[derive(Debug, Serialize)]
pub struct ItemDetail {
    pub item: ItemJson,
    pub merge_queue: Option<MergeQueueJson>,
    /// Set while the item's job waits to run again: until when, and why (a forge's
    /// rate limit, or the backoff after a transient error).
    pub waiting: Option<WaitingJson>,
    /// The `item.phase_changed` events of `events`.
    pub attempts: Vec<EventJson>,
    /// Each visit of a phase, oldest first; the last is the current one.
    pub phases: Vec<PhaseVisitJson>,
    pub budget: ItemBudgetJson,
    pub costs: Vec<CostJson>,
    pub costs_per_model: Vec<ModelCostJson>,
    pub events: Vec<EventJson>,
    pub gates: Vec<GateJson>,
    pub human_issues: Vec<HumanIssueJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitingJson {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// A stay in one phase: `left_at` is null for the current phase, whose `seconds` run
/// up to now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseVisitJson {
    pub phase: String,
    pub entered_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    pub seconds: f64,
}

/// The attempt and cost budgets of the item's project.
#[derive(Debug, Serialize)]
pub struct ItemBudgetJson {
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
    pub cost_budget_usd: Option<f64>,
}

/// What one model cost the item, over all phases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCostJson {
    pub model: String,
    pub usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Of `input_tokens`, those read from the provider's cache.
    pub cached_tokens: i64,
    /// The prices Damascus computed the dollars at (none when they were reported).
    pub prices: Vec<String>,
}

pub async fn item_detail(pool: &PgPool, id: i64) -> Result<ItemDetail, DbError> {
    let item = items::get_item(pool, id).await?;
    let (timeline, issues, costs, gates, queued, project, waiting) = tokio::try_join!(
        events::for_item(pool, id),
        items::human_issues_for_item(pool, id),
        items::costs_for_item(pool, id),
        items::gates_for_item(pool, id),
        damascus_db::merge_queue::entry(pool, id),
        projects::get_project(pool, item.project_id),
        items::waiting(pool, id),
    )?;
    let attempts = timeline
        .iter()
        .filter(|e| e.kind == "item.phase_changed")
        .cloned()
        .collect();
    let phases = phase_visits(
        item.created_at,
        item.phase,
        item.phase_entered_at,
        &timeline,
        Utc::now(),
    );
    Ok(ItemDetail {
        item: ItemJson::from(item),
        merge_queue: queued.map(MergeQueueJson::from),
        waiting: waiting.map(|w| WaitingJson {
            until: w.until,
            reason: w.reason,
        }),
        attempts,
        phases,
        budget: ItemBudgetJson {
            max_attempts_per_phase: project.max_attempts_per_phase,
            max_attempts_total: project.max_attempts_total,
            cost_budget_usd: project.cost_budget_usd,
        },
        costs_per_model: costs_per_model(&costs),
        costs: costs.into_iter().map(CostJson::from).collect(),
        events: timeline,
        gates: gates.into_iter().map(GateJson::from).collect(),
        human_issues: issues.into_iter().map(HumanIssueJson::from).collect(),
    })
}

/// The phase an event moved its item into, if it moved it: a verdict or an answer
/// (`item.phase_changed`), a retry, a cancel.
fn moved_to(event: &Event) -> Option<Phase> {
    match event.kind.as_str() {
        "item.phase_changed" | "item.retried" => event.payload.get("to")?.as_str()?.parse().ok(),
        "item.cancelled" => Some(Phase::Cancelled),
        _ => None,
    }
}

/// The item's visits of each phase from its timeline: it enters `spec` when ingested,
/// then each event that moves it ends one visit and starts the next. When the timeline
/// does not end in the item's phase (its older events were pruned), the current visit
/// starts at `phase_entered_at`.
fn phase_visits(
    created_at: DateTime<Utc>,
    current: Phase,
    phase_entered_at: DateTime<Utc>,
    timeline: &[Event],
    now: DateTime<Utc>,
) -> Vec<PhaseVisitJson> {
    let mut stays: Vec<(Phase, DateTime<Utc>, Option<DateTime<Utc>>)> =
        vec![(Phase::Spec, created_at, None)];
    for event in timeline {
        let Some(to) = moved_to(event) else { continue };
        let last = stays.last_mut().expect("the first visit is pushed above");
        if last.0 == to {
            continue;
        }
        last.2 = Some(event.created_at);
        stays.push((to, event.created_at, None));
    }
    let last = stays.last_mut().expect("the first visit is pushed above");
    if last.0 != current {
        last.2 = Some(last.2.unwrap_or(phase_entered_at));
        stays.push((current, phase_entered_at, None));
    }
    stays
        .into_iter()
        .map(|(phase, entered_at, left_at)| PhaseVisitJson {
            phase: phase.to_string(),
            entered_at,
            left_at,
            seconds: ((left_at.unwrap_or(now) - entered_at)
                .num_milliseconds()
                .max(0) as f64)
                / 1000.0,
        })
        .collect()
}

/// The item's costs summed per model, most expensive first.
fn costs_per_model(lines: &[CostLine]) -> Vec<ModelCostJson> {
    let mut per_model: BTreeMap<&str, ModelCostJson> = BTreeMap::new();
    for line in lines {
        let sum = per_model
            .entry(line.model.as_str())
            .or_insert_with(|| ModelCostJson {
                model: line.model.clone(),
                usd: 0.0,
                input_tokens: 0,
                output_tokens: 0,
                cached_tokens: 0,
                prices: Vec::new(),
            });
        sum.usd += line.usd;
        sum.input_tokens += line.tokens_in;
        sum.output_tokens += line.tokens_out;
        sum.cached_tokens += line.tokens_cached;
        if let Some(price) = &line.price {
            if !sum.prices.contains(price) {
                sum.prices.push(price.clone());
            }
        }
    }
    let mut sums: Vec<ModelCostJson> = per_model.into_values().collect();
    sums.sort_by(|a, b| b.usd.total_cmp(&a.usd).then_with(|| a.model.cmp(&b.model)));
    sums
}

/// The longest `q` searched for: a title's words, not a document.
const MAX_QUERY_CHARS: usize = 200;

/// A list's search text (`q`: empty means none) and order (`sort`), checked the same
/// for the API and MCP; the error says what was wrong and what is allowed.
pub fn search_and_sort(
    q: Option<String>,
    sort: Option<&str>,
) -> Result<(Option<String>, ItemSort), String> {
    let sort = match sort {
        None => ItemSort::default(),
        Some(name) => ItemSort::parse(name).ok_or_else(|| {
            format!(
                "sort {name:?} is not an order; use one of: {} (a leading - is descending)",
                ItemSort::NAMES.join(", ")
            )
        })?,
    };
    let text = q.filter(|t| !t.is_empty());
    if let Some(text) = &text {
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(format!(
                "q is longer than {MAX_QUERY_CHARS} characters; search for a few words of the title or body"
            ));
        }
        if text.contains('\0') {
            return Err(
                "q contains a NUL character, which no title or body holds; remove it".into(),
            );
        }
    }
    Ok((text, sort))
}

/// `GET /v1/items`: the items `filter` selects, with the window it asked for and how
/// many match in all.
#[derive(Debug, Serialize)]
pub struct ItemPage {
    pub items: Vec<ItemJson>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

pub async fn item_page(pool: &PgPool, filter: &ItemFilter) -> Result<ItemPage, DbError> {
    let (list, total) = tokio::try_join!(
        items::list_items(pool, filter),
        items::count_items(pool, filter)
    )?;
    Ok(ItemPage {
        items: list.into_iter().map(ItemJson::from).collect(),
        total,
        limit: filter.limit,
        offset: filter.offset,
    })
}

/// `GET /v1/projects` and `damascus project list --json`: every project, by name.
pub async fn projects(pool: &PgPool) -> Result<Vec<ProjectJson>, DbError> {
    Ok(projects::list_projects(pool)
        .await?
        .into_iter()
        .map(ProjectJson::from)
        .collect())
}

/// `GET /v1/merge-queue`: every repository's queue, each in order.
#[derive(Debug, Serialize)]
pub struct MergeQueues {
    pub queues: Vec<MergeQueueList>,
}

#[derive(Debug, Serialize)]
pub struct MergeQueueList {
    pub repository: String,
    pub base_branch: String,
    pub entries: Vec<MergeQueueEntryJson>,
}

/// One queued item: `position` 1 is the head; `state` is waiting, updating, testing
/// or merging since `since`; `batch_head` is the head whose batch tests it.
#[derive(Debug, Serialize)]
pub struct MergeQueueEntryJson {
    pub item_id: i64,
    pub title: String,
    pub position: i64,
    pub state: String,
    pub since: DateTime<Utc>,
    pub batch_head: Option<i64>,
}

pub async fn merge_queues(pool: &PgPool) -> Result<MergeQueues, DbError> {
    let mut queues: Vec<MergeQueueList> = Vec::new();
    // `list` answers the queues one after another, each in order.
    for entry in damascus_db::merge_queue::list(pool).await? {
        let same = queues.last().is_some_and(|q| {
            q.repository == entry.repository && q.base_branch == entry.base_branch
        });
        if !same {
            queues.push(MergeQueueList {
                repository: entry.repository.clone(),
                base_branch: entry.base_branch.clone(),
                entries: Vec::new(),
            });
        }
        queues
            .last_mut()
            .expect("a queue is pushed above")
            .entries
            .push(MergeQueueEntryJson {
                item_id: entry.item_id,
                title: entry.title,
                position: entry.position,
                state: entry.state.to_string(),
                since: entry.state_since,
                batch_head: entry.batch_head,
            });
    }
    Ok(MergeQueues { queues })
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
            "waiting_on_gate": s.overview.waiting_on_gate,
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn event(secs: i64, kind: &str, payload: Value) -> Event {
        Event {
            id: secs,
            item_id: Some(1),
            kind: kind.to_owned(),
            payload,
            created_at: at(secs),
        }
    }

    fn visits(
        current: Phase,
        entered: i64,
        timeline: &[Event],
    ) -> Vec<(String, i64, Option<i64>, f64)> {
        phase_visits(at(0), current, at(entered), timeline, at(100))
            .into_iter()
            .map(|v| {
                (
                    v.phase,
                    (v.entered_at - at(0)).num_seconds(),
                    v.left_at.map(|t| (t - at(0)).num_seconds()),
                    v.seconds,
                )
            })
            .collect()
    }

    #[test]
    fn a_new_item_is_in_spec_since_it_was_ingested() {
        let ingested = event(0, "item.ingested", json!({"phase": "spec"}));
        assert_eq!(
            visits(Phase::Spec, 0, &[ingested]),
            [("spec".into(), 0, None, 100.0)]
        );
    }

    #[test]
    fn each_move_ends_a_visit_and_repeats_do_not() {
        let timeline = [
            event(
                10,
                "item.phase_changed",
                json!({"from": "spec", "to": "build"}),
            ),
            event(
                20,
                "item.phase_changed",
                json!({"from": "build", "to": "build"}),
            ),
            event(
                30,
                "item.phase_changed",
                json!({"from": "build", "to": "blocked"}),
            ),
            event(40, "human_issue.answered", json!({})),
            event(50, "item.retried", json!({"to": "build"})),
            event(70, "item.cancelled", json!({"from": "build"})),
        ];
        assert_eq!(
            visits(Phase::Cancelled, 70, &timeline),
            [
                ("spec".into(), 0, Some(10), 10.0),
                ("build".into(), 10, Some(30), 20.0),
                ("blocked".into(), 30, Some(50), 20.0),
                ("build".into(), 50, Some(70), 20.0),
                ("cancelled".into(), 70, None, 30.0),
            ]
        );
    }

    #[test]
    fn a_pruned_timeline_ends_in_the_current_phase() {
        assert_eq!(
            visits(Phase::Review, 60, &[]),
            [
                ("spec".into(), 0, Some(60), 60.0),
                ("review".into(), 60, None, 40.0)
            ]
        );
    }

    #[test]
    fn costs_sum_per_model() {
        let line = |phase, model: &str, usd, tokens_in, tokens_out| CostLine {
            phase,
            model: model.to_owned(),
            calls: 1,
            tokens_in,
            tokens_out,
            tokens_cached: tokens_in / 5,
            price: (model == "big").then(|| "big at 1/0.1/5 USD per Mtok".to_owned()),
            usd,
        };
        let sums = costs_per_model(&[
            line(Phase::Spec, "small", 0.5, 10, 1),
            line(Phase::Build, "big", 2.0, 100, 20),
            line(Phase::Build, "small", 0.25, 5, 2),
        ]);
        assert_eq!(
            sums,
            [
                ModelCostJson {
                    model: "big".into(),
                    usd: 2.0,
                    input_tokens: 100,
                    output_tokens: 20,
                    cached_tokens: 20,
                    prices: vec!["big at 1/0.1/5 USD per Mtok".into()]
                },
                ModelCostJson {
                    model: "small".into(),
                    usd: 0.75,
                    input_tokens: 15,
                    output_tokens: 3,
                    cached_tokens: 3,
                    prices: vec![]
                },
            ]
        );
    }
}
