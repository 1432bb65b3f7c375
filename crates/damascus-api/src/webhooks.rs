//! The webhook routes: register, list, show, remove, redrive and test a webhook, the
//! same operations as `damascus webhook …`, through the same checks
//! (`damascus_relay::register`) and the same `damascus-db` functions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use damascus_db::webhooks::{self, Outcome, Redrive, WebhookSummary};
use damascus_db::DbError;
use damascus_relay::register::{self, WebhookRequest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::json::{ApiJson, ApiName};

use crate::{ApiError, AppState};

/// A webhook as the API shows it: its URL's host only (a path or query can hold a
/// token) and never its secret, which is answered once, when it is added.
#[derive(Debug, Serialize)]
pub struct WebhookJson {
    pub name: String,
    pub host: String,
    /// `null`: every kind.
    pub event_kinds: Option<Vec<String>>,
    pub max_attempts: i32,
    pub pending: i64,
    pub retrying: i64,
    pub dead: i64,
    pub delivered: i64,
    pub oldest_undelivered_seconds: Option<f64>,
    pub last_error: Option<String>,
}

impl From<WebhookSummary> for WebhookJson {
    fn from(w: WebhookSummary) -> WebhookJson {
        WebhookJson {
            host: damascus_relay::host_of(&w.webhook.url),
            name: w.webhook.name,
            event_kinds: w.webhook.event_kinds,
            max_attempts: w.webhook.max_attempts,
            pending: w.pending,
            retrying: w.retrying,
            dead: w.dead,
            delivered: w.delivered,
            oldest_undelivered_seconds: w.oldest_undelivered_secs,
            last_error: w.last_error,
        }
    }
}

/// `GET /v1/webhooks`.
#[derive(Debug, Serialize)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddWebhookBody {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub event: Option<i64>,
}

async fn summary(state: &AppState, name: &str) -> Result<WebhookSummary, ApiError> {
    webhooks::list(&state.pool)
        .await?
        .into_iter()
        .find(|w| w.webhook.name == name)
        .ok_or_else(|| DbError::WebhookNotFound(name.to_owned()).into())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    Ok(Json(crate::views::webhook_list(&state.pool).await?))
}

pub async fn add(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddWebhookBody>,
) -> Result<Response, ApiError> {
    let new = register::new_webhook(WebhookRequest {
        name: body.name,
        url: body.url,
        secret: body.secret,
        events: body.events,
        max_attempts: body.max_attempts,
    })
    .map_err(|e| ApiError::unprocessable(format!("{}: {e}", e.field())))?;
    let added = webhooks::add(&state.pool, &new).await?;
    let shown = summary(&state, &added.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "webhook": WebhookJson::from(shown), "secret": added.secret })),
    )
        .into_response())
}

pub async fn show(
    State(state): State<AppState>,
    ApiName(name): ApiName,
) -> Result<Json<WebhookJson>, ApiError> {
    Ok(Json(summary(&state, &name).await?.into()))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiName(name): ApiName,
) -> Result<Json<Value>, ApiError> {
    webhooks::remove(&state.pool, &name).await?;
    Ok(Json(json!({ "removed": name })))
}

pub async fn redrive(
    State(state): State<AppState>,
    ApiName(name): ApiName,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // No body: the dead deliveries.
    let body: RedriveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::unprocessable(format!(
                "the body must be {{\"since\": RFC 3339 time}}, {{\"event\": id}} or empty: {e}"
            ))
        })?
    };
    let which = match (body.since, body.event) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give since or event, not both: since redrives every event from that time on, event one event",
            ))
        }
        (Some(at), None) => Redrive::Since(at),
        (None, Some(id)) if id >= 1 => Redrive::Event(id),
        (None, Some(id)) => {
            return Err(ApiError::unprocessable(format!(
                "event must be an event id (a positive integer), got {id}"
            )))
        }
        (None, None) => Redrive::Dead,
    };
    let queued = webhooks::redrive(&state.pool, &name, which).await?;
    Ok(Json(json!({ "webhook": name, "queued": queued })))
}

/// Sends a signed `webhook.test` event now; the answer says what the receiver did (a
/// receiver that refuses it is a result, not an error of this request).
pub async fn test(
    State(state): State<AppState>,
    ApiName(name): ApiName,
) -> Result<Json<Value>, ApiError> {
    let webhook = webhooks::get(&state.pool, &name).await?;
    Ok(Json(match register::send_test(&webhook).await {
        Outcome::Delivered { status } => {
            json!({ "webhook": name, "delivered": true, "status": status, "error": null })
        }
        Outcome::Failed { status, error, .. } => {
            json!({ "webhook": name, "delivered": false, "status": status, "error": error })
        }
    }))
}
