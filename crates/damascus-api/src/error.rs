//! The one error type of the API: a status and a JSON body
//! `{"error": {"code": "...", "message": "..."}}` whose message says what was wrong and
//! what to do. Internal errors are logged and answered without their detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use damascus_db::DbError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required: send 'Authorization: Bearer <token>'; create one with: damascus token create NAME",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        (self.status, body).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match &e {
            DbError::ItemNotFound(_)
            | DbError::HumanIssueNotFound(_)
            | DbError::WebhookNotFound(_) => ApiError::not_found(e.to_string()),
            DbError::ProjectNotFound(_) => ApiError::unprocessable(e.to_string()),
            DbError::HumanIssueClosed { .. }
            | DbError::Conflict(_)
            | DbError::WebhookExists(_)
            | DbError::ProjectExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            DbError::Constraint(_) | DbError::EventNotFound(_) => {
                ApiError::unprocessable(e.to_string())
            }
            _ => {
                tracing::error!(error = %format!("{e:#}"), "request failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server could not complete the request; try again, and see its log if it persists",
                )
            }
        }
    }
}
