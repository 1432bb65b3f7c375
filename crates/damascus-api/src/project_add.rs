//! `POST /v1/projects`: registers a repository as a project, with the same defaults and
//! checks as `damascus project add`. Forge tokens are not part of a project (they come
//! from the server's environment), so nothing secret crosses here.

use std::str::FromStr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use damascus_core::{AgentKind, NewProject, ProjectName};
use serde::Deserialize;
use serde_json::json;

use crate::json::ApiJson;
use crate::{ApiError, AppState};

/// The deployment's defaults for a new project's agent, from the environment (the
/// configuration file's `[project_defaults]` sets them): `DAMASCUS_AGENT` (a kind),
/// `DAMASCUS_AGENT_MODEL`, `DAMASCUS_AGENT_ARGS` (a JSON list of strings). A project
/// that names its own agent (or gives `agent_command`) takes none of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentDefaults {
    pub agent: Option<AgentKind>,
    pub model: Option<String>,
    pub args: Vec<String>,
}

impl AgentDefaults {
    pub fn from_env() -> Result<AgentDefaults, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let agent = var("DAMASCUS_AGENT")
            .map(|kind| {
                kind.trim()
                    .parse::<AgentKind>()
                    .map_err(|e| format!("DAMASCUS_AGENT (project_defaults.agent): {e}"))
            })
            .transpose()?;
        let args = var("DAMASCUS_AGENT_ARGS")
            .map(|json| {
                serde_json::from_str::<Vec<String>>(&json).map_err(|_| {
                    "DAMASCUS_AGENT_ARGS (project_defaults.agent_args) must be a JSON list of strings, e.g. [\"-c\", \"model_reasoning_effort=high\"]".to_owned()
                })
            })
            .transpose()?
            .unwrap_or_default();
        Ok(AgentDefaults {
            agent,
            model: var("DAMASCUS_AGENT_MODEL"),
            args,
        })
    }

    /// The agent settings of a project that gives `agent`, `model`, `args` and
    /// `command` itself: its own where it names an agent or a command, else these
    /// defaults.
    pub fn apply(
        &self,
        agent: Option<AgentKind>,
        model: Option<String>,
        args: Vec<String>,
        command: Option<&Vec<String>>,
    ) -> (AgentKind, Option<String>, Vec<String>) {
        match (agent, command) {
            (Some(agent), _) => (agent, model, args),
            (None, Some(_)) => (AgentKind::Command, model, args),
            (None, None) => match self.agent {
                Some(default) => (
                    default,
                    model.or_else(|| self.model.clone()),
                    if args.is_empty() {
                        self.args.clone()
                    } else {
                        args
                    },
                ),
                None => (AgentKind::Claude, model, args),
            },
        }
    }
}

/// The body: `name` and `repository` are required; every other field has the CLI's
/// default. `agent` is claude (the default), codex, gemini, opencode or command;
/// `agent_command` (the command agent's argv, which alone means `agent: command`) and
/// `agent_args` are argument lists (never run by a shell).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProjectBody {
    name: String,
    repository: String,
    default_branch: Option<String>,
    forge: Option<String>,
    forge_repo: Option<String>,
    forge_url: Option<String>,
    test_command: Option<String>,
    spec_mode: Option<String>,
    max_attempts_per_phase: Option<i32>,
    max_attempts_total: Option<i32>,
    cost_budget_usd: Option<f64>,
    daily_cost_budget_usd: Option<f64>,
    merge_method: Option<String>,
    require_approval: Option<bool>,
    merge_batch_size: Option<i32>,
    branch_update: Option<String>,
    sandbox: Option<String>,
    rounds_per_answer: Option<i32>,
    #[serde(default)]
    context_docs: Vec<String>,
    agent: Option<String>,
    agent_model: Option<String>,
    #[serde(default)]
    agent_args: Vec<String>,
    agent_command: Option<Vec<String>>,
    agent_timeout_secs: Option<i32>,
    test_timeout_secs: Option<i32>,
}

/// `value` parsed as `T`, or a 422 that names `field` and the values it takes.
fn variant<T: FromStr<Err = damascus_core::UnknownVariant>>(
    field: &str,
    value: Option<String>,
    default: T,
) -> Result<T, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: damascus_core::UnknownVariant| {
            ApiError::unprocessable(format!("{field}: {e}"))
        }),
    }
}

impl NewProjectBody {
    fn into_project(self) -> Result<NewProject, ApiError> {
        let name = ProjectName::parse(&self.name)
            .map_err(|e| ApiError::unprocessable(format!("name: {e}")))?;
        let d = NewProject::local(name, self.repository);
        let kind = match self.agent {
            None => None,
            Some(kind) => Some(kind.parse().map_err(|e: damascus_core::UnknownVariant| {
                ApiError::unprocessable(format!("agent: {e}"))
            })?),
        };
        let defaults = AgentDefaults::from_env().map_err(ApiError::unprocessable)?;
        let (agent, agent_model, agent_args) = defaults.apply(
            kind,
            self.agent_model,
            self.agent_args,
            self.agent_command.as_ref(),
        );
        if let Some(argv) = &self.agent_command {
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                return Err(ApiError::unprocessable(
                    "agent_command: give the program and its arguments as a list, e.g. [\"/usr/local/bin/my-agent\", \"--fast\"], or leave it out and choose an agent with \"agent\"",
                ));
            }
        }
        let project = NewProject {
            default_branch: self.default_branch.unwrap_or(d.default_branch),
            forge_kind: variant("forge", self.forge, d.forge_kind)?,
            forge_repo: self.forge_repo,
            forge_url: self.forge_url,
            test_command: self.test_command,
            spec_mode: variant("spec_mode", self.spec_mode, d.spec_mode)?,
            max_attempts_per_phase: self
                .max_attempts_per_phase
                .unwrap_or(d.max_attempts_per_phase),
            max_attempts_total: self.max_attempts_total.unwrap_or(d.max_attempts_total),
            cost_budget_usd: self.cost_budget_usd,
            daily_cost_budget_usd: self.daily_cost_budget_usd,
            merge_method: variant("merge_method", self.merge_method, d.merge_method)?,
            require_approval: self.require_approval.unwrap_or(d.require_approval),
            merge_batch_size: self.merge_batch_size.unwrap_or(d.merge_batch_size),
            branch_update: variant("branch_update", self.branch_update, d.branch_update)?,
            sandbox: variant("sandbox", self.sandbox, d.sandbox)?,
            rounds_per_answer: self.rounds_per_answer.unwrap_or(d.rounds_per_answer),
            context_docs: self.context_docs,
            agent,
            agent_model,
            agent_args,
            agent_command: self.agent_command,
            agent_timeout_secs: self.agent_timeout_secs.unwrap_or(d.agent_timeout_secs),
            test_timeout_secs: self.test_timeout_secs.unwrap_or(d.test_timeout_secs),
            ..d
        };
        project
            .validate()
            .and_then(|()| project.check_price(&deployment_prices()))
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        Ok(project)
    }
}

/// The price table of this server: data/prices.toml with `DAMASCUS_AGENT_PRICES` (the
/// worker refuses a malformed one at its start; here it is ignored).
fn deployment_prices() -> damascus_core::prices::PriceTable {
    let entries: Vec<String> = std::env::var("DAMASCUS_AGENT_PRICES")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    damascus_core::prices::PriceTable::with_overrides(&entries)
        .unwrap_or_else(|_| damascus_core::prices::PriceTable::built_in())
}

pub async fn add(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewProjectBody>,
) -> Result<Response, ApiError> {
    let project = body.into_project()?;
    let added = damascus_db::projects::add_project(&state.pool, &project).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": added.name,
            "repository": added.repository,
            "forge": added.forge_kind.to_string(),
            "default_branch": added.default_branch,
        })),
    )
        .into_response())
}
