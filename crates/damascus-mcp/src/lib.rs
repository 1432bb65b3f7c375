//! damascus-mcp: the Model Context Protocol server (`damascus mcp`, stdio), so that an
//! agent (Claude Desktop, Claude Code, any MCP client) can feed stories to Damascus and
//! answer its questions.
//!
//! Tools: `ingest_story`, `answer_question`, `list_items`, `get_item`,
//! `list_human_issues`. Each calls the same `damascus-db` function as the CLI and the
//! HTTP API, and answers with the API's JSON shapes (`damascus_api::json`). A call with
//! bad arguments is a tool error whose text says what was wrong; nothing here panics on
//! input.
//!
//! Architecture invariant: stdout carries only protocol messages; logs go to stderr.

use damascus_api::json::{HumanIssueJson, ItemJson};
use damascus_core::{HumanIssueStatus, LockName, Phase, ProjectName, Story};
use damascus_db::items::{self, ItemFilter};
use damascus_db::{human, DbError};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestStory {
    #[schemars(
        description = "The project's name, as `damascus project list` shows it (e.g. \"web\")"
    )]
    pub project: String,
    #[schemars(description = "The story's title: one line, 1-200 characters")]
    pub title: String,
    #[schemars(description = "The story in Markdown; acceptance criteria and a test command help")]
    #[serde(default)]
    pub body: String,
    #[schemars(description = "Ids of items that must be merged before this one starts")]
    #[serde(default)]
    pub depends_on: Vec<i64>,
    #[schemars(
        description = "Named locks the item holds through its review: items sharing one never review or merge at the same time (e.g. \"db-schema\")"
    )]
    #[serde(default)]
    pub locks: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerQuestion {
    #[schemars(description = "The human issue's id (from list_human_issues or get_item)")]
    pub human_issue_id: i64,
    #[schemars(description = "The answer; it is added to the item's next prompt")]
    pub answer: String,
    #[schemars(description = "Who answers (recorded with the answer); defaults to \"mcp\"")]
    #[serde(default)]
    pub answered_by: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListItems {
    #[schemars(description = "Only this project's items")]
    #[serde(default)]
    pub project: Option<String>,
    #[schemars(
        description = "Only items in this phase: intake, spec, build, review, merged, blocked, cancelled"
    )]
    #[serde(default)]
    pub phase: Option<String>,
    #[schemars(description = "At most this many items (1-500, default 50)")]
    #[serde(default)]
    pub limit: Option<i64>,
    #[schemars(description = "Skip this many items (default 0)")]
    #[serde(default)]
    pub offset: Option<i64>,
    #[schemars(
        description = "Only items whose title or body holds this text (case-insensitive, at most 200 characters)"
    )]
    #[serde(default)]
    pub q: Option<String>,
    #[schemars(
        description = "The order: id (default, oldest first), updated, cost; a leading - is descending (-updated: most recently changed first)"
    )]
    #[serde(default)]
    pub sort: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetItem {
    #[schemars(description = "The item's id")]
    pub id: i64,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListHumanIssues {
    #[schemars(description = "open, answered or dismissed (default: all)")]
    #[serde(default)]
    pub status: Option<String>,
    #[schemars(description = "At most this many (1-500, default 100)")]
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct DamascusMcp {
    pool: PgPool,
    #[allow(dead_code)] // read by the code #[tool_handler] generates
    tool_router: ToolRouter<Self>,
}

/// A refusal the client can act on: a tool error, not a protocol failure.
fn refused(message: impl Into<String>) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(
        message.into(),
    )]))
}

fn answered(value: Value) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::structured(value))
}

/// Database failures the caller caused are refusals; the rest are internal errors,
/// logged here and reported without their detail.
fn from_db(e: DbError) -> Result<CallToolResult, ErrorData> {
    match e {
        DbError::ProjectNotFound(_)
        | DbError::ItemNotFound(_)
        | DbError::HumanIssueNotFound(_)
        | DbError::HumanIssueClosed { .. }
        | DbError::Conflict(_)
        | DbError::Constraint(_) => refused(e.to_string()),
        other => {
            tracing::error!(error = %format!("{other:#}"), "MCP tool failed");
            Err(ErrorData::internal_error(
                "the database could not complete the call; see the server's log",
                None,
            ))
        }
    }
}

fn limit(given: Option<i64>, default: i64) -> Result<i64, String> {
    let limit = given.unwrap_or(default);
    if (1..=500).contains(&limit) {
        Ok(limit)
    } else {
        Err(format!("limit must be between 1 and 500, got {limit}"))
    }
}

#[tool_router]
impl DamascusMcp {
    pub fn new(pool: PgPool) -> DamascusMcp {
        DamascusMcp {
            pool,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Add a story to a project as a new work item. Damascus then takes it through spec, build, review and merge on its own; it returns the item (id, phase, attempts)."
    )]
    async fn ingest_story(
        &self,
        Parameters(args): Parameters<IngestStory>,
    ) -> Result<CallToolResult, ErrorData> {
        let project = match ProjectName::parse(&args.project) {
            Ok(p) => p,
            Err(e) => return refused(format!("project: {e}")),
        };
        let story = match Story::new(&args.title, &args.body) {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let locks = match LockName::parse_all(&args.locks) {
            Ok(l) => l,
            Err(e) => return refused(format!("locks: {e}")),
        };
        let gates = items::IntakeGates {
            depends_on: args.depends_on,
            locks,
        };
        match items::ingest_with(&self.pool, &project, &story, "mcp", &gates).await {
            Ok(item) => answered(json!({ "item": ItemJson::from(item) })),
            Err(e) => from_db(e),
        }
    }

    #[tool(
        description = "Answer a question Damascus asked a person (a human issue). The item that asked resumes in the phase it left, with the answer in its next prompt."
    )]
    async fn answer_question(
        &self,
        Parameters(args): Parameters<AnswerQuestion>,
    ) -> Result<CallToolResult, ErrorData> {
        if args.answer.trim().is_empty() {
            return refused("answer is empty; write what the item should do");
        }
        let by = args.answered_by.unwrap_or_else(|| "mcp".into());
        match human::answer(&self.pool, args.human_issue_id, &args.answer, &by).await {
            Ok(done) => answered(json!({
                "human_issue": HumanIssueJson::from(done.issue),
                "resumed_in": done.resumed_in.map(|p| p.to_string()),
            })),
            Err(e) => from_db(e),
        }
    }

    #[tool(
        description = "List work items (oldest first unless sorted), optionally of one project or phase, or holding a text (q)."
    )]
    async fn list_items(
        &self,
        Parameters(args): Parameters<ListItems>,
    ) -> Result<CallToolResult, ErrorData> {
        let phase = match args.phase.as_deref().map(str::parse::<Phase>).transpose() {
            Ok(p) => p,
            Err(e) => return refused(e.to_string()),
        };
        let limit = match limit(args.limit, 50) {
            Ok(l) => l,
            Err(e) => return refused(e),
        };
        let offset = args.offset.unwrap_or(0);
        if offset < 0 {
            return refused(format!("offset must not be negative, got {offset}"));
        }
        let (text, sort) = match damascus_api::views::search_and_sort(args.q, args.sort.as_deref())
        {
            Ok(parts) => parts,
            Err(e) => return refused(e),
        };
        let filter = ItemFilter {
            project: args.project,
            phase,
            text,
            sort,
            limit,
            offset,
        };
        match items::list_items(&self.pool, &filter).await {
            Ok(list) => answered(
                json!({ "items": list.into_iter().map(ItemJson::from).collect::<Vec<_>>() }),
            ),
            Err(e) => from_db(e),
        }
    }

    #[tool(description = "One work item with its events, costs and human issues.")]
    async fn get_item(
        &self,
        Parameters(args): Parameters<GetItem>,
    ) -> Result<CallToolResult, ErrorData> {
        match damascus_api::views::item_detail(&self.pool, args.id).await {
            Ok(detail) => {
                answered(serde_json::to_value(detail).expect("an item's JSON has string keys only"))
            }
            Err(e) => from_db(e),
        }
    }

    #[tool(
        description = "Questions Damascus asked people, newest first; status=open lists the ones blocking items."
    )]
    async fn list_human_issues(
        &self,
        Parameters(args): Parameters<ListHumanIssues>,
    ) -> Result<CallToolResult, ErrorData> {
        let status = match args
            .status
            .as_deref()
            .map(str::parse::<HumanIssueStatus>)
            .transpose()
        {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let limit = match limit(args.limit, 100) {
            Ok(l) => l,
            Err(e) => return refused(e),
        };
        match items::list_human_issues(&self.pool, status, limit).await {
            Ok(list) => answered(
                json!({ "human_issues": list.into_iter().map(HumanIssueJson::from).collect::<Vec<_>>() }),
            ),
            Err(e) => from_db(e),
        }
    }
}

#[tool_handler]
impl ServerHandler for DamascusMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("damascus", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "Damascus takes software stories through spec, build, review and merge. Use ingest_story to add work, list_human_issues with status=open to see what blocks items, and answer_question to unblock them.",
        )
    }
}

/// Serves MCP on stdin/stdout until the client disconnects.
pub async fn serve_stdio(pool: PgPool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = DamascusMcp::new(pool)
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}
