//! Work items: ingesting a story, listing and reading items with their questions and
//! costs. Every change here is one transaction together with its outbox event.

use chrono::{DateTime, Utc};
use damascus_core::{HumanIssueStatus, LockName, Phase, ProjectName, Story, VerdictKind};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

use crate::error::{DbError, DbResult};
use crate::{events, parse_enum, parse_opt_enum, projects};

#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub id: i64,
    pub project_id: i64,
    pub project: String,
    pub title: String,
    pub body: String,
    pub phase: Phase,
    pub resume_phase: Option<Phase>,
    pub spec: Option<Value>,
    pub test_command: Option<String>,
    pub branch: Option<String>,
    pub pr_url: Option<String>,
    pub attempts_total: i32,
    pub phase_attempts: i32,
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
    pub cost_budget_usd: Option<f64>,
    pub cost_usd: f64,
    pub last_verdict: Option<VerdictKind>,
    pub last_verdict_reason: Option<String>,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub phase_entered_at: DateTime<Utc>,
}

const ITEM_COLUMNS: &str =
    "i.id, i.project_id, p.name as project, i.title, i.body, i.phase::text as phase, \
     i.resume_phase::text as resume_phase, i.spec, i.test_command, i.branch, i.pr_url, \
     i.attempts_total, i.phase_attempts, i.max_attempts_per_phase, i.max_attempts_total, \
     i.cost_budget_usd::float8 as cost_budget_usd, i.cost_usd::float8 as cost_usd, \
     i.last_verdict::text as last_verdict, i.last_verdict_reason, i.source, \
     i.created_at, i.updated_at, i.phase_entered_at";

fn item_from_row(row: &PgRow) -> DbResult<WorkItem> {
    Ok(WorkItem {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        project: row.try_get("project")?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        phase: parse_enum(row, "phase")?,
        resume_phase: parse_opt_enum(row, "resume_phase")?,
        spec: row.try_get("spec")?,
        test_command: row.try_get("test_command")?,
        branch: row.try_get("branch")?,
        pr_url: row.try_get("pr_url")?,
        attempts_total: row.try_get("attempts_total")?,
        phase_attempts: row.try_get("phase_attempts")?,
        max_attempts_per_phase: row.try_get("max_attempts_per_phase")?,
        max_attempts_total: row.try_get("max_attempts_total")?,
        cost_budget_usd: row.try_get("cost_budget_usd")?,
        cost_usd: row.try_get("cost_usd")?,
        last_verdict: parse_opt_enum(row, "last_verdict")?,
        last_verdict_reason: row.try_get("last_verdict_reason")?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        phase_entered_at: row.try_get("phase_entered_at")?,
    })
}

/// Stores a story as a new item in phase `spec`, with the project's budgets, and its
/// `item.ingested` event, in one transaction.
pub async fn ingest(
    pool: &PgPool,
    project: &ProjectName,
    story: &Story,
    source: &str,
) -> DbResult<WorkItem> {
    ingest_with(pool, project, story, source, &IntakeGates::default()).await
}

/// What an item waits for besides its own work: other items to be merged first, and
/// named locks it must hold for its review (see migration `named_locks`).
#[derive(Debug, Clone, Default)]
pub struct IntakeGates {
    pub depends_on: Vec<i64>,
    pub locks: Vec<LockName>,
}

/// Ingests a story whose item waits for other items to be merged first (`depends_on`),
/// holds named locks through its review (`locks`), and waits for a person's approval
/// of its spec when the project requires one. The item is
/// written in `intake`, its gates beside it, then moved to `spec`, so the spawn trigger
/// sees the gates: one transaction.
pub async fn ingest_with(
    pool: &PgPool,
    project: &ProjectName,
    story: &Story,
    source: &str,
    gates: &IntakeGates,
) -> DbResult<WorkItem> {
    let depends_on = &gates.depends_on;
    let mut tx = pool.begin().await?;
    let project = projects::find_project(&mut *tx, project.as_str()).await?;
    let mut merged_dependencies = Vec::new();
    for dependency in depends_on {
        // FOR SHARE: a merge of the dependency committing now is waited for and seen;
        // otherwise its trigger could miss the gate written here.
        let phase: Option<String> =
            sqlx::query_scalar("select phase::text from work_items where id = $1 for share")
                .bind(dependency)
                .fetch_optional(&mut *tx)
                .await?;
        match phase.as_deref() {
            None => return Err(DbError::ItemNotFound(*dependency)),
            Some("merged") => merged_dependencies.push(*dependency),
            Some("cancelled") => {
                return Err(DbError::Conflict(format!(
                "item {dependency} is cancelled and will never be merged; depend on another item"
            )))
            }
            Some(_) => {}
        }
    }
    let id: i64 = sqlx::query_scalar(
        "insert into work_items (project_id, title, body, phase, test_command,
            max_attempts_per_phase, max_attempts_total, cost_budget_usd, source)
         values ($1, $2, $3, 'intake', $4, $5, $6, $7::numeric, $8)
         returning id",
    )
    .bind(project.id)
    .bind(&story.title)
    .bind(&story.body)
    .bind(&project.test_command)
    .bind(project.max_attempts_per_phase)
    .bind(project.max_attempts_total)
    .bind(project.cost_budget_usd)
    .bind(source)
    .fetch_one(&mut *tx)
    .await?;
    for dependency in depends_on {
        sqlx::query(
            "insert into coordination_gates (item_id, kind, depends_on_item_id, opened_at, opened_by)
             values ($1, 'depends_on', $2, case when $3 then now() end, case when $3 then 'already merged' end)",
        )
        .bind(id)
        .bind(dependency)
        .bind(merged_dependencies.contains(dependency))
        .execute(&mut *tx)
        .await?;
    }
    for lock in &gates.locks {
        sqlx::query(
            "insert into coordination_gates (item_id, kind, lock_name) values ($1, 'lock', $2)",
        )
        .bind(id)
        .bind(lock.as_str())
        .execute(&mut *tx)
        .await?;
    }
    if project.require_approval {
        sqlx::query("insert into coordination_gates (item_id, kind) values ($1, 'approval')")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("update work_items set phase = 'spec' where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::record(
        &mut tx,
        Some(id),
        Some(project.id),
        "item.ingested",
        &json!({
            "project": project.name, "title": story.title, "phase": Phase::Spec, "source": source,
            "depends_on": depends_on, "needs_approval": project.require_approval,
            "locks": gates.locks.iter().map(LockName::as_str).collect::<Vec<_>>(),
        }),
    )
    .await?;
    let item = get_item(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(item)
}

/// What holds an item back.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub kind: String,
    pub depends_on_item_id: Option<i64>,
    pub lock_name: Option<String>,
    pub open: bool,
    pub opened_by: Option<String>,
}

pub async fn gates_for_item<'e>(db: impl PgExecutor<'e>, item_id: i64) -> DbResult<Vec<Gate>> {
    let rows = sqlx::query(
        "select kind::text as kind, depends_on_item_id, lock_name, opened_at is not null as open, opened_by
         from coordination_gates where item_id = $1 order by id",
    )
    .bind(item_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Gate {
                kind: row.try_get("kind")?,
                depends_on_item_id: row.try_get("depends_on_item_id")?,
                lock_name: row.try_get("lock_name")?,
                open: row.try_get("open")?,
                opened_by: row.try_get("opened_by")?,
            })
        })
        .collect()
}

/// Which items to list; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub project: Option<String>,
    pub phase: Option<Phase>,
    /// A case-insensitive substring of the title or the body, matched literally
    /// (`%`, `_` and `\` are not patterns).
    pub text: Option<String>,
    pub sort: ItemSort,
    pub limit: i64,
    pub offset: i64,
}

/// The order of a list of items; every order ends with the id, so pages never
/// overlap or skip an item whose key ties with another's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ItemSort {
    /// Oldest first (the order of ingest).
    #[default]
    Id,
    IdDesc,
    /// Least recently changed first.
    Updated,
    UpdatedDesc,
    /// Cheapest first.
    Cost,
    CostDesc,
}

impl ItemSort {
    /// Every order, as a client names it.
    pub const NAMES: [&'static str; 6] = ["id", "-id", "updated", "-updated", "cost", "-cost"];

    pub fn parse(name: &str) -> Option<ItemSort> {
        Some(match name {
            "id" => ItemSort::Id,
            "-id" => ItemSort::IdDesc,
            "updated" => ItemSort::Updated,
            "-updated" => ItemSort::UpdatedDesc,
            "cost" => ItemSort::Cost,
            "-cost" => ItemSort::CostDesc,
            _ => return None,
        })
    }

    fn order_by(self) -> &'static str {
        match self {
            ItemSort::Id => "i.id",
            ItemSort::IdDesc => "i.id desc",
            ItemSort::Updated => "i.updated_at, i.id",
            ItemSort::UpdatedDesc => "i.updated_at desc, i.id desc",
            ItemSort::Cost => "i.cost_usd, i.id",
            ItemSort::CostDesc => "i.cost_usd desc, i.id desc",
        }
    }
}

/// `text` as an ILIKE pattern that matches it literally anywhere (escape character `\`).
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The conditions of `ItemFilter`, binding $1 (project), $2 (phase) and $3 (pattern).
const ITEM_FILTER_WHERE: &str = "($1::text is null or p.name = $1)
    and ($2::work_phase is null or i.phase = $2::work_phase)
    and ($3::text is null or i.title ilike $3 escape '\\' or i.body ilike $3 escape '\\')";

pub async fn list_items(pool: &PgPool, filter: &ItemFilter) -> DbResult<Vec<WorkItem>> {
    if let Some(name) = &filter.project {
        // An unknown project is a mistake worth saying, not an empty list.
        projects::find_project(pool, name).await?;
    }
    let sql = format!(
        "select {ITEM_COLUMNS} from work_items i join projects p on p.id = i.project_id
         where {ITEM_FILTER_WHERE}
         order by {} limit $4 offset $5",
        filter.sort.order_by()
    );
    let rows = sqlx::query(&sql)
        .bind(&filter.project)
        .bind(filter.phase.map(Phase::as_str))
        .bind(filter.text.as_deref().map(contains_pattern))
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(pool)
        .await?;
    rows.iter().map(item_from_row).collect()
}

/// How many items `filter` selects, whatever its window (`limit`, `offset`).
pub async fn count_items(pool: &PgPool, filter: &ItemFilter) -> DbResult<i64> {
    let sql = format!(
        "select count(*) from work_items i join projects p on p.id = i.project_id
         where {ITEM_FILTER_WHERE}"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&filter.project)
        .bind(filter.phase.map(Phase::as_str))
        .bind(filter.text.as_deref().map(contains_pattern))
        .fetch_one(pool)
        .await?)
}

pub async fn get_item<'e>(db: impl PgExecutor<'e>, id: i64) -> DbResult<WorkItem> {
    let sql = format!("select {ITEM_COLUMNS} from work_items i join projects p on p.id = i.project_id where i.id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(DbError::ItemNotFound(id))?;
    item_from_row(&row)
}

#[derive(Debug, Clone, PartialEq)]
pub struct HumanIssue {
    pub id: i64,
    pub item_id: i64,
    /// The phase the item left; a retry re-runs it as it is.
    pub phase: Phase,
    /// Where an answer resumes the item (`damascus_core::on_answer`).
    pub on_answer: Phase,
    pub question: String,
    pub context: String,
    pub status: HumanIssueStatus,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

fn human_issue_from_row(row: &PgRow) -> DbResult<HumanIssue> {
    Ok(HumanIssue {
        id: row.try_get("id")?,
        item_id: row.try_get("item_id")?,
        phase: parse_enum(row, "phase")?,
        on_answer: parse_enum(row, "on_answer")?,
        question: row.try_get("question")?,
        context: row.try_get("context")?,
        status: parse_enum(row, "status")?,
        answer: row.try_get("answer")?,
        answered_by: row.try_get("answered_by")?,
        created_at: row.try_get("created_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

pub async fn human_issues_for_item<'e>(
    db: impl PgExecutor<'e>,
    item_id: i64,
) -> DbResult<Vec<HumanIssue>> {
    let rows = sqlx::query(
        "select id, item_id, phase::text as phase, on_answer::text as on_answer, question, context,
                status::text as status, answer,
                answered_by, created_at, resolved_at
         from human_issues where item_id = $1 order by id",
    )
    .bind(item_id)
    .fetch_all(db)
    .await?;
    rows.iter().map(human_issue_from_row).collect()
}

/// An item's spending per phase and model.
#[derive(Debug, Clone, PartialEq)]
pub struct CostLine {
    pub phase: Phase,
    pub model: String,
    pub calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// Of `tokens_in`, those read from the provider's cache.
    pub tokens_cached: i64,
    /// The price Damascus computed the dollars at, or `None` when they were reported.
    pub price: Option<String>,
    pub usd: f64,
}

pub async fn costs_for_item<'e>(db: impl PgExecutor<'e>, item_id: i64) -> DbResult<Vec<CostLine>> {
    let rows = sqlx::query(
        "select phase::text as phase, model, count(*) as calls, sum(tokens_in)::int8 as tokens_in,
                sum(tokens_out)::int8 as tokens_out, sum(tokens_cached)::int8 as tokens_cached,
                price, sum(usd)::float8 as usd
         from cost_ledger where item_id = $1
         group by phase, model, price order by phase, model, price",
    )
    .bind(item_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(CostLine {
                phase: parse_enum(row, "phase")?,
                model: row.try_get("model")?,
                calls: row.try_get("calls")?,
                tokens_in: row.try_get("tokens_in")?,
                tokens_out: row.try_get("tokens_out")?,
                tokens_cached: row.try_get("tokens_cached")?,
                price: row.try_get("price")?,
                usd: row.try_get("usd")?,
            })
        })
        .collect()
}

/// Why an item's job is not running now though it is queued: it waits until `until`
/// (a forge's rate limit, or the backoff after a transient error), for `reason`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Waiting {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// What the item's job waits for, if it waits.
pub async fn waiting<'e>(db: impl sqlx::PgExecutor<'e>, item: i64) -> DbResult<Option<Waiting>> {
    Ok(sqlx::query_as(
        "select run_at as until, coalesce(last_error, 'waiting') as reason
         from damascus_jobs
         where item_id = $1 and run_at > now() and runs < max_runs
           and not exists (select 1 from damascus_slots s
                           where s.job_id = damascus_jobs.job_id and s.lease_until >= now())",
    )
    .bind(item)
    .fetch_optional(db)
    .await?)
}

/// The most recent failure of an item (its reason and output tail), which the next
/// build reads as feedback.
pub async fn last_failure<'e>(
    db: impl PgExecutor<'e>,
    item_id: i64,
) -> DbResult<Option<(String, String)>> {
    let row = sqlx::query(
        "select coalesce(payload->>'reason', '') as reason, coalesce(payload->>'log_tail', '') as log_tail
         from events_outbox
         where item_id = $1 and kind = 'item.phase_changed' and payload->>'verdict' = 'fail'
         order by id desc limit 1",
    )
    .bind(item_id)
    .fetch_optional(db)
    .await?;
    row.map(|row| Ok((row.try_get("reason")?, row.try_get("log_tail")?)))
        .transpose()
}

/// Human issues across items, newest first, optionally of one status.
pub async fn list_human_issues(
    pool: &PgPool,
    status: Option<HumanIssueStatus>,
    limit: i64,
) -> DbResult<Vec<HumanIssue>> {
    let rows = sqlx::query(
        "select id, item_id, phase::text as phase, on_answer::text as on_answer, question, context,
                status::text as status, answer,
                answered_by, created_at, resolved_at
         from human_issues where ($1::human_issue_status is null or status = $1::human_issue_status)
         order by id desc limit $2",
    )
    .bind(status.map(HumanIssueStatus::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(human_issue_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_their_text_literally() {
        assert_eq!(contains_pattern("login"), "%login%");
        assert_eq!(contains_pattern("50%_off"), "%50\\%\\_off%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
    }

    #[test]
    fn every_sort_name_parses() {
        for name in ItemSort::NAMES {
            assert!(ItemSort::parse(name).is_some(), "{name}");
        }
        assert_eq!(ItemSort::parse("title"), None);
    }
}
