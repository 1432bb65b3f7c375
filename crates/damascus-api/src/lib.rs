//! damascus-api: the HTTP interface. JSON over axum for items (and the operator's
//! approve, cancel, retry), projects (pause, resume), the merge queues, stats, human
//! issues, live events and item logs (SSE), webhooks (add, list, remove, redrive, test),
//! Prometheus metrics, bearer-token auth, and the web UI served from assets embedded in
//! the binary.
//!
//! Architecture invariants: the only crate that knows HTTP and JSON shapes (documented
//! in docs/API.md and served at /v1/openapi.json; `views` builds the documents the CLI's
//! `--json` and the MCP server print too, so there is one serializer per shape); no SQL — it calls the same
//! `damascus-db` functions as the CLI (ingest, answer, list); nothing a client sends
//! yields a 500 (internal errors are logged and answered without detail).

mod assets;
mod auth;
mod error;
mod history;
pub mod json;
pub mod logs;
mod metrics;
mod operator;
pub mod project_add;
mod routes;
pub mod views;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// The largest request body accepted: a story is prose, not an attachment.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// What the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `/healthz` without a token (load balancers and compose health checks).
    pub public_health: bool,
    /// `/metrics` without a token (Prometheus scrapers).
    pub public_metrics: bool,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            public_health: true,
            public_metrics: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: ApiConfig,
    /// `<data-dir>/logs`, where the loops write each item's output; `None` when this
    /// process has no data directory (then `/v1/items/{id}/logs` says so).
    pub logs_dir: Option<PathBuf>,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/items", get(routes::list_items).post(routes::ingest))
        .route("/items/{id}", get(routes::get_item))
        .route("/items/{id}/approve", post(operator::approve))
        .route("/items/{id}/cancel", post(operator::cancel))
        .route("/items/{id}/retry", post(operator::retry))
        .route("/items/{id}/logs", get(routes::item_logs))
        .route(
            "/projects",
            get(routes::list_projects).post(project_add::add),
        )
        .route("/projects/{name}/pause", post(operator::pause))
        .route("/projects/{name}/resume", post(operator::resume))
        .route("/merge-queue", get(routes::merge_queue))
        .route("/stats", get(routes::stats))
        .route("/stats/history", get(history::history))
        .route("/workers", get(history::workers))
        .route("/human-issues", get(routes::list_human_issues))
        .route("/human-issues/{id}/answer", post(routes::answer))
        .route("/events", get(routes::events))
        .route("/webhooks", get(webhooks::list).post(webhooks::add))
        .route(
            "/webhooks/{name}",
            get(webhooks::show).delete(webhooks::remove),
        )
        .route("/webhooks/{name}/redrive", post(webhooks::redrive))
        .route("/webhooks/{name}/test", post(webhooks::test))
        .route("/openapi.json", get(routes::openapi))
        .fallback(routes::not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let mut health = Router::new().route("/healthz", get(routes::healthz));
    if !state.config.public_health {
        health = health.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    }
    let mut metrics = Router::new().route("/metrics", get(metrics::metrics));
    if !state.config.public_metrics {
        metrics = metrics.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    }
    Router::new()
        .route("/", get(routes::ui))
        .merge(assets::router())
        .nest("/v1", v1)
        .merge(health)
        .merge(metrics)
        .fallback(routes::not_found)
        .layer(middleware::from_fn(metrics::time_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "HTTP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
