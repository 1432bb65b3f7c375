//! The operator's buttons: approve, cancel and retry an item; pause and resume a
//! project. Each calls the `damascus_db::operator` function the CLI's `damascus item
//! approve|cancel|retry` and `damascus project pause|resume` call, and answers the
//! state after it. An action the item's state does not allow is a 409 whose message
//! says the state and what would work.

use axum::extract::State;
use axum::Json;
use damascus_core::ProjectName;
use damascus_db::{items, operator, DbError};
use serde_json::{json, Value};

use crate::json::{ActionBody, ApiId, ApiName, ApiOptionalJson, ItemJson, NoFields};
use crate::{ApiError, AppState};

/// The longest name an action may be recorded under.
const MAX_BY_CHARS: usize = 100;

/// Who acts: the body's `by`, or `api`.
fn actor(body: ActionBody) -> Result<String, ApiError> {
    let Some(by) = body.by else {
        return Ok("api".to_owned());
    };
    let by = by.trim();
    if by.is_empty() {
        return Err(ApiError::unprocessable(
            "by: is empty; name who acts (e.g. your login), or leave by out",
        ));
    }
    if by.chars().count() > MAX_BY_CHARS || by.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "by: must be at most {MAX_BY_CHARS} characters without control characters; name who acts"
        )));
    }
    Ok(by.to_owned())
}

/// The item after an action, as `GET /v1/items/{id}` answers its `item`.
async fn item_after(state: &AppState, id: i64) -> Result<Json<Value>, ApiError> {
    let item = ItemJson::from(items::get_item(&state.pool, id).await?);
    Ok(Json(json!({ "item": item })))
}

pub async fn approve(
    State(state): State<AppState>,
    ApiId(id): ApiId,
    ApiOptionalJson(body): ApiOptionalJson<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    operator::approve(&state.pool, id, &actor(body)?).await?;
    item_after(&state, id).await
}

pub async fn cancel(
    State(state): State<AppState>,
    ApiId(id): ApiId,
    ApiOptionalJson(body): ApiOptionalJson<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    operator::cancel(&state.pool, id, &actor(body)?).await?;
    item_after(&state, id).await
}

pub async fn retry(
    State(state): State<AppState>,
    ApiId(id): ApiId,
    ApiOptionalJson(body): ApiOptionalJson<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    operator::retry(&state.pool, id, &actor(body)?).await?;
    item_after(&state, id).await
}

/// A project name from the path; one no project can have is a 400 that says why.
fn project_name(raw: &str) -> Result<ProjectName, ApiError> {
    ProjectName::parse(raw)
        .map_err(|e| ApiError::bad_request(format!("{e}; list projects with: GET /v1/projects")))
}

/// An unknown project in the path is the resource that is missing: 404, not 422.
fn project_error(e: DbError) -> ApiError {
    match e {
        DbError::ProjectNotFound(_) => ApiError::not_found(e.to_string()),
        other => other.into(),
    }
}

/// `{"project", "paused": true, "items": n}`: n queued jobs were withdrawn.
pub async fn pause(
    State(state): State<AppState>,
    ApiName(name): ApiName,
    ApiOptionalJson(NoFields {}): ApiOptionalJson<NoFields>,
) -> Result<Json<Value>, ApiError> {
    let name = project_name(&name)?;
    let withdrawn = operator::pause_project(&state.pool, name.as_str())
        .await
        .map_err(project_error)?;
    Ok(Json(
        json!({ "project": name.as_str(), "paused": true, "items": withdrawn }),
    ))
}

/// `{"project", "paused": false, "items": n}`: n items in working phases are queued again.
pub async fn resume(
    State(state): State<AppState>,
    ApiName(name): ApiName,
    ApiOptionalJson(NoFields {}): ApiOptionalJson<NoFields>,
) -> Result<Json<Value>, ApiError> {
    let name = project_name(&name)?;
    let items = operator::resume_project(&state.pool, name.as_str())
        .await
        .map_err(project_error)?;
    Ok(Json(
        json!({ "project": name.as_str(), "paused": false, "items": items }),
    ))
}
