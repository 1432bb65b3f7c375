//! The JSON shapes of the API (stable field names; docs/API.md lists them) and the
//! extractors that turn every malformed request into a JSON error that says what was
//! wrong.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use damascus_core::Phase;
use damascus_db::events::Event;
use damascus_db::items::{CostLine, Gate, HumanIssue, WorkItem};
use damascus_db::projects::ProjectSummary;
use damascus_db::status::WorkerRow;
use damascus_db::tokens::TokenInfo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ApiError;

/// A JSON body; a malformed one is a 400/413/415/422 with a JSON error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(body_error(rejection.status(), rejection.body_text())),
        }
    }
}

/// The JSON error for a body axum refused with `status`.
fn body_error(status: StatusCode, text: String) -> ApiError {
    let code = match status.as_u16() {
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        _ => "bad_request",
    };
    let hint = match status.as_u16() {
        413 => format!(" (the limit is {} bytes)", crate::MAX_BODY_BYTES),
        415 => " (send 'Content-Type: application/json')".to_owned(),
        _ => String::new(),
    };
    ApiError::new(status, code, format!("{text}{hint}"))
}

/// A JSON body that may be left out: an empty body is `T::default()`, as for a
/// button's `POST` that carries nothing. A body that is there is read like `ApiJson`.
pub struct ApiOptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for ApiOptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| {
                let essence = v.split(';').next().unwrap_or_default().trim().to_owned();
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_error(r.status(), r.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiOptionalJson(T::default()));
        }
        if !json_type {
            return Err(body_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a body was sent without the JSON content type; send no body, or JSON".to_owned(),
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(ApiOptionalJson(value)),
            Err(rejection) => Err(body_error(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters; bad ones are a 400 with a JSON error.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// A numeric id in the path; anything else is a 400 with a JSON error.
pub struct ApiId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for ApiId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad_request(r.body_text()))?;
        match raw.parse::<i64>() {
            Ok(id) if id >= 1 => Ok(ApiId(id)),
            _ => Err(ApiError::bad_request(format!(
                "{raw:?} is not an id; ids are positive integers"
            ))),
        }
    }
}

/// A name in the path (a webhook's); one that is not registered is the handler's 404.
pub struct ApiName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad_request(r.body_text()))?;
        Ok(ApiName(raw))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    pub project: String,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// Items that must be merged before this one starts.
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// Named locks the item holds through its review.
    #[serde(default)]
    pub locks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    pub answer: String,
    #[serde(default)]
    pub answered_by: Option<String>,
}

/// The body of `POST /v1/items/{id}/approve|cancel|retry`: who acts (default `api`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    pub by: Option<String>,
}

/// The body of `POST /v1/projects/{name}/pause|resume`: nothing, or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

#[derive(Debug, Serialize)]
pub struct Attempts {
    pub phase: i32,
    pub total: i32,
    pub max_per_phase: i32,
    pub max_total: i32,
}

#[derive(Debug, Serialize)]
pub struct ItemJson {
    pub id: i64,
    pub project: String,
    pub title: String,
    pub body: String,
    pub phase: String,
    pub resume_phase: Option<String>,
    pub spec: Option<Value>,
    pub test_command: Option<String>,
    pub branch: Option<String>,
    pub pr_url: Option<String>,
    pub attempts: Attempts,
    pub cost_usd: f64,
    pub cost_budget_usd: Option<f64>,
    pub last_verdict: Option<String>,
    pub last_verdict_reason: Option<String>,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub phase_entered_at: DateTime<Utc>,
}

impl From<WorkItem> for ItemJson {
    fn from(i: WorkItem) -> ItemJson {
        ItemJson {
            id: i.id,
            project: i.project,
            title: i.title,
            body: i.body,
            phase: i.phase.to_string(),
            resume_phase: i.resume_phase.map(|p| p.to_string()),
            spec: i.spec,
            test_command: i.test_command,
            branch: i.branch,
            pr_url: i.pr_url,
            attempts: Attempts {
                phase: i.phase_attempts,
                total: i.attempts_total,
                max_per_phase: i.max_attempts_per_phase,
                max_total: i.max_attempts_total,
            },
            cost_usd: i.cost_usd,
            cost_budget_usd: i.cost_budget_usd,
            last_verdict: i.last_verdict.map(|v| v.to_string()),
            last_verdict_reason: i.last_verdict_reason,
            source: i.source,
            created_at: i.created_at,
            updated_at: i.updated_at,
            phase_entered_at: i.phase_entered_at,
        }
    }
}

/// The Event JSON: `damascus_db::events::Event`'s own serde form, which webhook
/// deliveries use too.
pub type EventJson = Event;

/// What holds an item back: `kind` is depends_on, approval or lock; `open` means it
/// no longer holds (for a lock: the item holds it).
#[derive(Debug, Serialize)]
pub struct GateJson {
    pub kind: String,
    pub depends_on_item_id: Option<i64>,
    pub lock: Option<String>,
    pub open: bool,
    pub opened_by: Option<String>,
}

impl From<Gate> for GateJson {
    fn from(g: Gate) -> GateJson {
        GateJson {
            kind: g.kind,
            depends_on_item_id: g.depends_on_item_id,
            lock: g.lock_name,
            open: g.open,
            opened_by: g.opened_by,
        }
    }
}

/// Where an item stands in its repository's merge queue (`null` when it is not queued).
#[derive(Debug, Serialize)]
pub struct MergeQueueJson {
    pub repository: String,
    pub base_branch: String,
    /// 1 is the head, the item being updated, tested or merged.
    pub position: i64,
    pub length: i64,
    /// waiting, updating, testing or merging.
    pub state: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// The head whose batch this item is tested in.
    pub batch_head: Option<i64>,
    pub tested_commit: Option<String>,
}

impl From<damascus_db::merge_queue::QueueEntry> for MergeQueueJson {
    fn from(q: damascus_db::merge_queue::QueueEntry) -> MergeQueueJson {
        MergeQueueJson {
            repository: q.repository,
            base_branch: q.base_branch,
            position: q.position,
            length: q.length,
            state: q.state.to_string(),
            since: q.state_since,
            batch_head: q.batch_head,
            tested_commit: q.tested_commit,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HumanIssueJson {
    pub id: i64,
    pub item_id: i64,
    /// The phase the item left (a retry re-runs it as it is).
    pub phase: String,
    /// Where an answer resumes the item: build (rebuilt with the answer), spec or review.
    pub on_answer: String,
    /// What answering does, and the other ways out (retry, cancel).
    pub hint: String,
    pub question: String,
    pub context: String,
    pub status: String,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<HumanIssue> for HumanIssueJson {
    fn from(h: HumanIssue) -> HumanIssueJson {
        HumanIssueJson {
            id: h.id,
            item_id: h.item_id,
            phase: h.phase.to_string(),
            on_answer: h.on_answer.to_string(),
            hint: damascus_core::answer_hint(h.item_id, h.phase, h.on_answer),
            question: h.question,
            context: h.context,
            status: h.status.to_string(),
            answer: h.answer,
            answered_by: h.answered_by,
            created_at: h.created_at,
            resolved_at: h.resolved_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CostJson {
    pub phase: String,
    pub model: String,
    pub calls: i64,
    /// Every input token, cached ones included.
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_cached: i64,
    /// The price Damascus computed `usd` at; null when the agent or endpoint reported it.
    pub price: Option<String>,
    pub usd: f64,
}

impl From<CostLine> for CostJson {
    fn from(c: CostLine) -> CostJson {
        CostJson {
            phase: c.phase.to_string(),
            model: c.model,
            calls: c.calls,
            tokens_in: c.tokens_in,
            tokens_out: c.tokens_out,
            tokens_cached: c.tokens_cached,
            price: c.price,
            usd: c.usd,
        }
    }
}

/// A worker process: `state` is live, stopping (draining after SIGTERM) or silent (no
/// heartbeat within four of its leases, `damascus_worker_alive`; its jobs run again
/// elsewhere).
#[derive(Debug, Serialize)]
pub struct WorkerJson {
    pub id: i64,
    pub host: String,
    pub pid: i32,
    pub state: String,
    /// A heartbeat within its lease.
    pub alive: bool,
    /// Draining after SIGTERM: claims nothing new.
    pub stopping: bool,
    pub running: i64,
    pub concurrency: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

impl From<WorkerRow> for WorkerJson {
    fn from(w: WorkerRow) -> WorkerJson {
        let state = match (w.alive, w.stopping) {
            (false, _) => "silent",
            (true, true) => "stopping",
            (true, false) => "live",
        };
        WorkerJson {
            id: w.id,
            host: w.host,
            pid: w.pid,
            state: state.to_owned(),
            alive: w.alive,
            stopping: w.stopping,
            running: w.running,
            concurrency: w.concurrency,
            started_at: w.started_at,
            heartbeat_at: w.heartbeat_at,
        }
    }
}

/// A project: what it works on, whether it runs, its budgets and items, and every other
/// setting under `settings`. Secrets are never project data (the workers read forge
/// tokens and API keys from their environment); credentials in a repository URL (a row
/// written past `damascus project add`'s check) are masked, and so are arguments of the
/// agent command that look like secrets.
#[derive(Debug, Serialize)]
pub struct ProjectJson {
    pub name: String,
    /// local, gitea or github.
    pub forge: String,
    /// The git remote (URL or path), credentials masked.
    pub repository: String,
    pub base_branch: String,
    pub spec_mode: String,
    pub paused: bool,
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
    pub budget: ProjectBudgetJson,
    /// Every phase, with how many of the project's items are in it.
    pub items_per_phase: BTreeMap<String, i64>,
    pub settings: ProjectSettingsJson,
}

#[derive(Debug, Serialize)]
pub struct ProjectBudgetJson {
    /// What the project may spend per day (UTC); null: no cap.
    pub daily_cap_usd: Option<f64>,
    /// Spent since midnight UTC.
    pub spent_today_usd: f64,
    /// What each new item may spend; null: no cap.
    pub item_cap_usd: Option<f64>,
}

/// The settings `damascus project add` took that the top level does not show.
#[derive(Debug, Serialize)]
pub struct ProjectSettingsJson {
    /// owner/repo on the forge.
    pub forge_repo: Option<String>,
    pub forge_url: Option<String>,
    pub test_command: Option<String>,
    /// claude, codex, gemini, opencode or command.
    pub agent: String,
    /// null: the agent's own default model.
    pub agent_model: Option<String>,
    /// Arguments added to the agent's command line (secret-looking ones masked).
    pub agent_args: Vec<String>,
    /// The command agent's argv; null for the other agents.
    pub agent_command: Option<Vec<String>>,
    pub agent_timeout_secs: i32,
    pub test_timeout_secs: i32,
    pub context_docs: Vec<String>,
    pub merge_method: String,
    pub merge_batch_size: i32,
    pub branch_update: String,
    pub sandbox: String,
    pub require_approval: bool,
    pub rounds_per_answer: i32,
    pub created_at: DateTime<Utc>,
}

/// An agent command with the values of arguments that look like secrets masked:
/// `--api-key VALUE`, `--token=VALUE`, `SECRET=VALUE`, and known key formats.
fn masked_command(argv: Vec<String>) -> Vec<String> {
    // Besides the forges' tokens: OpenAI/Anthropic keys (sk-) and Slack's (xox).
    const OTHER_TOKEN_PREFIXES: [&str; 2] = ["sk-", "xox"];
    const SECRET_WORDS: [&str; 6] = ["key", "token", "secret", "password", "passwd", "auth"];
    let names_secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_WORDS.iter().any(|w| name.contains(w))
    };
    let mut masked = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for arg in argv {
        if std::mem::take(&mut hide_next) {
            masked.push("***".to_owned());
            continue;
        }
        if let Some((name, _)) = arg.split_once('=') {
            if names_secret(name) {
                masked.push(format!("{name}=***"));
                continue;
            }
        }
        if arg.starts_with('-') && names_secret(&arg) {
            hide_next = true;
        }
        if damascus_core::project::FORGE_TOKEN_PREFIXES
            .iter()
            .chain(&OTHER_TOKEN_PREFIXES)
            .any(|p| arg.starts_with(p))
        {
            masked.push("***".to_owned());
            continue;
        }
        masked.push(arg);
    }
    masked
}

impl From<ProjectSummary> for ProjectJson {
    fn from(s: ProjectSummary) -> ProjectJson {
        let p = s.project;
        let masked = |url: String| damascus_core::project::credentials_in_url(&url).unwrap_or(url);
        let mut items_per_phase: BTreeMap<String, i64> =
            Phase::ALL.iter().map(|p| (p.to_string(), 0)).collect();
        for (phase, n) in s.items_per_phase {
            items_per_phase.insert(phase.to_string(), n);
        }
        ProjectJson {
            name: p.name,
            forge: p.forge_kind.to_string(),
            repository: masked(p.repository),
            base_branch: p.default_branch,
            spec_mode: p.spec_mode.to_string(),
            paused: p.paused,
            max_attempts_per_phase: p.max_attempts_per_phase,
            max_attempts_total: p.max_attempts_total,
            budget: ProjectBudgetJson {
                daily_cap_usd: p.daily_cost_budget_usd,
                spent_today_usd: s.spent_today_usd,
                item_cap_usd: p.cost_budget_usd,
            },
            items_per_phase,
            settings: ProjectSettingsJson {
                forge_repo: p.forge_repo,
                forge_url: p.forge_url.map(masked),
                test_command: p.test_command,
                agent: p.agent.to_string(),
                agent_model: p.agent_model,
                agent_args: masked_command(p.agent_args),
                agent_command: p.agent_command.map(masked_command),
                agent_timeout_secs: p.agent_timeout_secs,
                test_timeout_secs: p.test_timeout_secs,
                context_docs: p.context_docs,
                merge_method: p.merge_method.to_string(),
                merge_batch_size: p.merge_batch_size,
                branch_update: p.branch_update.to_string(),
                sandbox: p.sandbox.to_string(),
                require_approval: p.require_approval,
                rounds_per_answer: p.rounds_per_answer,
                created_at: p.created_at,
            },
        }
    }
}

/// An API token: its name and use, never its secret or the secret's hash.
#[derive(Debug, Serialize)]
pub struct TokenJson {
    pub name: String,
    /// active or revoked.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenInfo> for TokenJson {
    fn from(t: TokenInfo) -> TokenJson {
        TokenJson {
            name: t.name,
            state: if t.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(argv: &[&str], shown: &[&str]) {
        let argv = argv.iter().map(|a| a.to_string()).collect();
        assert_eq!(masked_command(argv), shown);
    }

    #[test]
    fn secrets_in_an_agent_command_are_masked() {
        check(&["claude", "-p"], &["claude", "-p"]);
        check(
            &["agent", "--api-key", "abc123"],
            &["agent", "--api-key", "***"],
        );
        check(&["agent", "--token=abc"], &["agent", "--token=***"]);
        check(
            &["env", "OPENAI_API_KEY=abc", "run"],
            &["env", "OPENAI_API_KEY=***", "run"],
        );
        check(&["agent", "sk-ant-123"], &["agent", "***"]);
        check(
            &["agent", "--model", "claude-3-5-sonnet-20241022"],
            &["agent", "--model", "claude-3-5-sonnet-20241022"],
        );
    }
}
