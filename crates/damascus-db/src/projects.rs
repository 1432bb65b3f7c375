//! Projects: the repositories Damascus works on, with their forge, test command and
//! default budgets.

use chrono::{DateTime, Utc};
use damascus_core::{
    AgentKind, BranchUpdate, ForgeKind, MergeMethod, NewProject, Phase, Sandbox, SpecMode,
};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

use crate::error::{DbError, DbResult};
use crate::parse_enum;

#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub repository: String,
    pub default_branch: String,
    pub forge_kind: ForgeKind,
    pub forge_repo: Option<String>,
    pub forge_url: Option<String>,
    pub test_command: Option<String>,
    pub spec_mode: SpecMode,
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
    pub cost_budget_usd: Option<f64>,
    pub context_docs: Vec<String>,
    pub agent: AgentKind,
    pub agent_model: Option<String>,
    pub agent_args: Vec<String>,
    pub agent_command: Option<Vec<String>>,
    pub agent_timeout_secs: i32,
    pub test_timeout_secs: i32,
    pub daily_cost_budget_usd: Option<f64>,
    pub merge_method: MergeMethod,
    pub require_approval: bool,
    pub merge_batch_size: i32,
    pub branch_update: BranchUpdate,
    pub sandbox: Sandbox,
    pub rounds_per_answer: i32,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
}

/// A project with how many items it has and what it spent today.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSummary {
    pub project: Project,
    pub items_total: i64,
    pub items_live: i64,
    /// Items per phase, phases without items left out, in phase order.
    pub items_per_phase: Vec<(Phase, i64)>,
    /// Spent since midnight UTC: what `daily_cost_budget_usd` caps.
    pub spent_today_usd: f64,
}

const PROJECT_COLUMNS: &str =
    "p.id, p.name, p.repository, p.default_branch, p.forge_kind::text as forge_kind, \
     p.forge_repo, p.forge_url, p.test_command, p.spec_mode::text as spec_mode, \
     p.max_attempts_per_phase, p.max_attempts_total, p.cost_budget_usd::float8 as cost_budget_usd, \
     p.context_docs, p.agent, p.agent_model, p.agent_args, p.agent_command, p.agent_timeout_secs, p.test_timeout_secs, \
     p.daily_cost_budget_usd::float8 as daily_cost_budget_usd, p.merge_method, p.require_approval, \
     p.merge_batch_size, p.branch_update, p.sandbox, p.rounds_per_answer, p.paused, p.created_at";

fn project_from_row(row: &PgRow) -> DbResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        repository: row.try_get("repository")?,
        default_branch: row.try_get("default_branch")?,
        forge_kind: parse_enum(row, "forge_kind")?,
        forge_repo: row.try_get("forge_repo")?,
        forge_url: row.try_get("forge_url")?,
        test_command: row.try_get("test_command")?,
        spec_mode: parse_enum(row, "spec_mode")?,
        max_attempts_per_phase: row.try_get("max_attempts_per_phase")?,
        max_attempts_total: row.try_get("max_attempts_total")?,
        cost_budget_usd: row.try_get("cost_budget_usd")?,
        context_docs: row.try_get("context_docs")?,
        agent: parse_enum(row, "agent")?,
        agent_model: row.try_get("agent_model")?,
        agent_args: row.try_get("agent_args")?,
        agent_command: row.try_get("agent_command")?,
        agent_timeout_secs: row.try_get("agent_timeout_secs")?,
        test_timeout_secs: row.try_get("test_timeout_secs")?,
        daily_cost_budget_usd: row.try_get("daily_cost_budget_usd")?,
        merge_method: parse_enum(row, "merge_method")?,
        require_approval: row.try_get("require_approval")?,
        merge_batch_size: row.try_get("merge_batch_size")?,
        branch_update: parse_enum(row, "branch_update")?,
        sandbox: parse_enum(row, "sandbox")?,
        rounds_per_answer: row.try_get("rounds_per_answer")?,
        paused: row.try_get("paused")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Stores a validated project. The name is unique; a duplicate is `ProjectExists`.
pub async fn add_project(pool: &PgPool, new: &NewProject) -> DbResult<Project> {
    let sql = format!(
        "with p as (
            insert into projects (name, repository, default_branch, forge_kind, forge_repo, forge_url,
                test_command, spec_mode, max_attempts_per_phase, max_attempts_total, cost_budget_usd, context_docs,
                agent_command, agent_timeout_secs, test_timeout_secs, daily_cost_budget_usd, merge_method, require_approval,
                merge_batch_size, branch_update, rounds_per_answer, sandbox, agent, agent_model, agent_args)
            values ($1, $2, $3, $4::forge_kind, $5, $6, $7, $8::spec_mode, $9, $10, $11::numeric, $12, $13, $14, $15, $16::numeric, $17, $18, $19, $20, $21, $22, $23, $24, $25)
            returning *)
         select {PROJECT_COLUMNS} from p"
    );
    let row = sqlx::query(&sql)
        .bind(new.name.as_str())
        .bind(&new.repository)
        .bind(&new.default_branch)
        .bind(new.forge_kind.as_str())
        .bind(&new.forge_repo)
        .bind(&new.forge_url)
        .bind(&new.test_command)
        .bind(new.spec_mode.as_str())
        .bind(new.max_attempts_per_phase)
        .bind(new.max_attempts_total)
        .bind(new.cost_budget_usd)
        .bind(&new.context_docs)
        .bind(&new.agent_command)
        .bind(new.agent_timeout_secs)
        .bind(new.test_timeout_secs)
        .bind(new.daily_cost_budget_usd)
        .bind(new.merge_method.as_str())
        .bind(new.require_approval)
        .bind(new.merge_batch_size)
        .bind(new.branch_update.as_str())
        .bind(new.rounds_per_answer)
        .bind(new.sandbox.as_str())
        .bind(new.agent.as_str())
        .bind(&new.agent_model)
        .bind(&new.agent_args)
        .fetch_one(pool)
        .await
        .map_err(
            |e| match e.as_database_error().and_then(|d| d.constraint()) {
                Some("projects_name_key") => DbError::ProjectExists(new.name.to_string()),
                _ => DbError::from(e),
            },
        )?;
    project_from_row(&row)
}

pub async fn find_project<'e>(db: impl PgExecutor<'e>, name: &str) -> DbResult<Project> {
    let sql = format!("select {PROJECT_COLUMNS} from projects p where p.name = $1");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| DbError::ProjectNotFound(name.to_owned()))?;
    project_from_row(&row)
}

pub async fn get_project<'e>(db: impl PgExecutor<'e>, id: i64) -> DbResult<Project> {
    let sql = format!("select {PROJECT_COLUMNS} from projects p where p.id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| DbError::ProjectNotFound(format!("#{id}")))?;
    project_from_row(&row)
}

pub async fn list_projects(pool: &PgPool) -> DbResult<Vec<ProjectSummary>> {
    // "Today" is the day `damascus_reserve_budget` holds a daily cap against.
    let sql = format!(
        "select {PROJECT_COLUMNS},
            (select count(*) from work_items i where i.project_id = p.id) as items_total,
            (select count(*) from work_items i where i.project_id = p.id
                and i.phase not in ('merged', 'cancelled')) as items_live,
            (select coalesce(sum(c.usd), 0)::float8 from cost_ledger c
                join work_items i on i.id = c.item_id
                where i.project_id = p.id
                  and c.created_at >= date_trunc('day', now() at time zone 'utc') at time zone 'utc')
                as spent_today_usd,
            pc.phases, pc.counts
         from projects p
         left join lateral (
            select array_agg(x.phase::text order by x.phase) as phases,
                   array_agg(x.n order by x.phase) as counts
            from (select i.phase, count(*) as n from work_items i where i.project_id = p.id
                  group by i.phase) x) pc on true
         order by p.name"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let phases: Option<Vec<String>> = row.try_get("phases")?;
            let counts: Option<Vec<i64>> = row.try_get("counts")?;
            let items_per_phase = phases
                .unwrap_or_default()
                .iter()
                .zip(counts.unwrap_or_default())
                .map(|(phase, n)| {
                    phase.parse::<Phase>().map(|phase| (phase, n)).map_err(|e| {
                        DbError::Sqlx(sqlx::Error::ColumnDecode {
                            index: "phases".to_owned(),
                            source: Box::new(e),
                        })
                    })
                })
                .collect::<DbResult<_>>()?;
            Ok(ProjectSummary {
                project: project_from_row(row)?,
                items_total: row.try_get("items_total")?,
                items_live: row.try_get("items_live")?,
                items_per_phase,
                spent_today_usd: row.try_get("spent_today_usd")?,
            })
        })
        .collect()
}
