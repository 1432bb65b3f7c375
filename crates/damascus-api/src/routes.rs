//! The handlers. Each validates what the client sent, calls one `damascus-db` service
//! function (the same the CLI and the MCP server call), and shapes the answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use damascus_core::{HumanIssueStatus, LockName, Phase, ProjectName, Story};
use damascus_db::items::{self, ItemFilter};
use damascus_db::{events, human, migrate};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::json::{AnswerBody, ApiId, ApiJson, ApiQuery, HumanIssueJson, IngestBody, ItemJson};
use crate::logs::{self, LogTail};
use crate::{views, ApiError, AppState};

const UI: &str = include_str!("../assets/index.html");
const OPENAPI: &str = include_str!("../assets/openapi.json");

pub async fn ui() -> Html<&'static str> {
    Html(UI)
}

pub async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is described at /v1/openapi.json")
}

pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let schema = migrate::schema_state(&state.pool).await?;
    let version = match schema {
        migrate::SchemaState::Current { version } => version,
        migrate::SchemaState::Ahead { applied } => applied,
        migrate::SchemaState::Behind { .. } | migrate::SchemaState::Empty => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "schema_behind",
                "the database schema is not current; run: damascus init",
            ))
        }
    };
    Ok(Json(
        json!({ "status": "ok", "database": "reachable", "schema_version": version }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    project: Option<String>,
    phase: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
    group_by: Option<String>,
    q: Option<String>,
    sort: Option<String>,
}

pub async fn list_items(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ItemsQuery>,
) -> Result<Response, ApiError> {
    let phase = q
        .phase
        .as_deref()
        .map(str::parse::<Phase>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 500, got {limit}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(format!(
            "offset must not be negative, got {offset}"
        )));
    }
    let (text, sort) =
        views::search_and_sort(q.q, q.sort.as_deref()).map_err(ApiError::bad_request)?;
    let filter = ItemFilter {
        project: q.project.clone(),
        phase,
        text,
        sort,
        limit,
        offset,
    };
    let page = views::item_page(&state.pool, &filter)
        .await
        .map_err(|e| match e {
            damascus_db::DbError::ProjectNotFound(_) => ApiError::not_found(e.to_string()),
            other => other.into(),
        })?;
    match q.group_by.as_deref() {
        None => Ok(Json(page).into_response()),
        Some("project") => {
            let mut groups: BTreeMap<String, Vec<ItemJson>> = BTreeMap::new();
            for item in page.items {
                groups.entry(item.project.clone()).or_default().push(item);
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(project, items)| {
                    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                    for item in &items {
                        *counts.entry(item.phase.clone()).or_default() += 1;
                    }
                    json!({ "project": project, "count": items.len(), "phases": counts, "items": items })
                })
                .collect();
            Ok(Json(
                json!({ "groups": groups, "total": page.total, "limit": limit, "offset": offset }),
            )
            .into_response())
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "group_by {other:?} is not supported; use group_by=project"
        ))),
    }
}

pub async fn ingest(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<IngestBody>,
) -> Result<Response, ApiError> {
    let project = ProjectName::parse(&body.project)
        .map_err(|e| ApiError::unprocessable(format!("project: {e}")))?;
    let story =
        Story::new(&body.title, &body.body).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let locks = LockName::parse_all(&body.locks)
        .map_err(|e| ApiError::unprocessable(format!("locks: {e}")))?;
    let gates = items::IntakeGates {
        depends_on: body.depends_on,
        locks,
    };
    // An unknown dependency is a field of this request that is wrong: 422, not 404.
    let item = items::ingest_with(&state.pool, &project, &story, "api", &gates)
        .await
        .map_err(|e| match e {
            damascus_db::DbError::ItemNotFound(_) => {
                ApiError::unprocessable(format!("depends_on: {e}"))
            }
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(ItemJson::from(item))).into_response())
}

pub async fn get_item(
    State(state): State<AppState>,
    ApiId(id): ApiId,
) -> Result<Json<views::ItemDetail>, ApiError> {
    Ok(Json(views::item_detail(&state.pool, id).await?))
}

pub async fn list_projects(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "projects": views::projects(&state.pool).await? }),
    ))
}

pub async fn merge_queue(
    State(state): State<AppState>,
) -> Result<Json<views::MergeQueues>, ApiError> {
    Ok(Json(views::merge_queues(&state.pool).await?))
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(views::stats(&state.pool).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuesQuery {
    status: Option<String>,
    limit: Option<i64>,
}

pub async fn list_human_issues(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<IssuesQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<HumanIssueStatus>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 500, got {limit}"
        )));
    }
    let issues: Vec<HumanIssueJson> = items::list_human_issues(&state.pool, status, limit)
        .await?
        .into_iter()
        .map(HumanIssueJson::from)
        .collect();
    Ok(Json(json!({ "human_issues": issues })))
}

pub async fn answer(
    State(state): State<AppState>,
    ApiId(id): ApiId,
    ApiJson(body): ApiJson<AnswerBody>,
) -> Result<Json<Value>, ApiError> {
    if body.answer.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "answer is empty; write what the item should do",
        ));
    }
    let by = body.answered_by.unwrap_or_else(|| "api".into());
    let answered = human::answer(&state.pool, id, &body.answer, &by).await?;
    Ok(Json(json!({
        "human_issue": HumanIssueJson::from(answered.issue),
        "resumed_in": answered.resumed_in.map(|p| p.to_string()),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
}

/// Server-Sent Events from the outbox, oldest first, resumable: a client that
/// reconnects with `Last-Event-ID` (or `?after=ID`) gets exactly what it missed.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let from_header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event id (an integer)")
                })?,
        ),
        None => None,
    };
    let mut last = match from_header.or(q.after) {
        Some(id) => id,
        None => events::latest_id(&state.pool).await?,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        loop {
            match events::after(&pool, last, 200).await {
                Ok(batch) => {
                    for event in batch {
                        last = event.id;
                        let id = event.id.to_string();
                        let kind = event.kind.clone();
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        let sse = SseEvent::default().id(id).event(kind).data(data);
                        if sender.send(Ok(sse)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream cannot read the outbox; retrying")
                }
            }
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()))
}

/// How often the log stream looks for new output.
const LOG_POLL: Duration = Duration::from_millis(150);

/// Server-Sent Events of an item's output (`event: log`, `data: {"file", "text"}`):
/// everything its log files hold, oldest file first, then what is appended, until the
/// client leaves. An item without output yet keeps the stream open until some appears.
pub async fn item_logs(
    State(state): State<AppState>,
    ApiId(id): ApiId,
) -> Result<impl IntoResponse, ApiError> {
    let Some(logs_dir) = state.logs_dir.clone() else {
        return Err(ApiError::not_found(
            "this server was started without a data directory, so it serves no logs; \
             read them with: damascus logs ID",
        ));
    };
    items::get_item(&state.pool, id).await?;
    let mut tail = LogTail::new(logs::item_dir(&logs_dir, id));
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(16);
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            // Everything there is, then a pause; `send` waits while the client is slow.
            loop {
                // Files are read off the async threads: a slow disk stalls only this stream.
                let read = tokio::task::spawn_blocking(move || {
                    let chunks = tail.read_new();
                    (tail, chunks)
                })
                .await;
                let Ok((returned, chunks)) = read else {
                    return;
                };
                tail = returned;
                let chunks = match chunks {
                    Ok(chunks) => chunks,
                    Err(e) => {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(item = id, error = %e, "cannot read the item's logs; retrying");
                        }
                        break;
                    }
                };
                if chunks.is_empty() {
                    break;
                }
                for chunk in chunks {
                    let data = json!({ "file": chunk.file, "text": chunk.text() });
                    let sse = SseEvent::default().event("log").data(data.to_string());
                    if sender.send(Ok(sse)).await.is_err() {
                        return;
                    }
                }
            }
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()))
}
