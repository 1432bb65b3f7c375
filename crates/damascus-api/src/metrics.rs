//! `GET /metrics`: this process's counters and histograms (`damascus-metrics`) and the
//! gauges of the system's current state, read from the database for this scrape; and
//! the middleware that times every HTTP request by its route's pattern.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use damascus_db::status;
use damascus_metrics::Gauge;

use crate::{ApiError, AppState};

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let s = status::stats(&state.pool).await?;
    let workers = status::workers(&state.pool).await?;
    let hooks = damascus_db::webhooks::list(&state.pool).await?;

    let mut items = Gauge::new("damascus_items", "Work items per phase.", &["phase"]);
    for (phase, n) in &s.overview.items_per_phase {
        items = items.with(vec![phase.to_string()], *n as f64);
    }
    let mut jobs = Gauge::new("damascus_jobs", "Queue jobs per state.", &["state"]);
    for (state, n) in [
        ("queued", s.overview.jobs_queued),
        ("running", s.overview.jobs_running),
        ("retry_wait", s.overview.jobs_retry_wait),
        ("dead", s.overview.jobs_dead),
    ] {
        jobs = jobs.with(vec![state.into()], n as f64);
    }
    let mut backlog = Gauge::new(
        "damascus_webhook_backlog",
        "Deliveries a webhook has not taken, by state (pending, retrying, dead).",
        &["webhook", "state"],
    );
    let mut oldest = Gauge::new(
        "damascus_webhook_oldest_undelivered_seconds",
        "Age of the oldest event a webhook has not taken yet (0: none).",
        &["webhook"],
    );
    for w in &hooks {
        for (state, n) in [
            ("pending", w.pending),
            ("retrying", w.retrying),
            ("dead", w.dead),
        ] {
            backlog = backlog.with(vec![w.webhook.name.clone(), state.into()], n as f64);
        }
        oldest = oldest.with(
            vec![w.webhook.name.clone()],
            w.oldest_undelivered_secs.unwrap_or(0.0),
        );
    }
    let oldest_event = hooks
        .iter()
        .filter_map(|w| w.oldest_undelivered_secs)
        .fold(0.0, f64::max);
    let gauges = vec![
        items,
        jobs,
        Gauge::single(
            "damascus_concurrency",
            "The global cap on running phases.",
            f64::from(s.overview.concurrency),
        ),
        Gauge::single(
            "damascus_workers_live",
            "Worker processes with a recent heartbeat.",
            workers.iter().filter(|w| w.alive).count() as f64,
        ),
        Gauge::single(
            "damascus_human_issues_open",
            "Questions waiting for a person.",
            s.overview.open_human_issues as f64,
        ),
        backlog,
        oldest,
        Gauge::single(
            "damascus_events_oldest_undelivered_seconds",
            "Age of the oldest event some webhook has not taken yet (0: none).",
            oldest_event,
        ),
    ];
    let text = damascus_metrics::render(gauges).map_err(|e| {
        tracing::error!(error = %e, "cannot write the metrics");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server could not write its metrics; see its log",
        )
    })?;
    Ok(([("content-type", damascus_metrics::CONTENT_TYPE)], text).into_response())
}

/// Times each request into `damascus_http_request_duration_seconds{route,status}`; a
/// request no route matched counts as route "unmatched", so the label set stays
/// bounded whatever paths clients send. An event stream counts the time to its first
/// byte.
pub async fn time_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    damascus_metrics::http_request(&route, response.status().as_u16(), started.elapsed());
    response
}
