//! `GET /v1/stats/history?window=&step=` (the console's charts) and `GET /v1/workers`
//! (the worker processes with their last heartbeat).

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use damascus_db::history;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::json::ApiQuery;
use crate::{ApiError, AppState};

/// Buckets a history may have at most.
const MAX_BUCKETS: u64 = 1000;
const MAX_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// A duration as `90s`, `15m`, `1h`, `7d` or a whole number of seconds.
fn parse_duration(field: &str, raw: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{field} {raw:?} is not a duration; write a whole number with s, m, h or d (e.g. 15m, 24h, 7d)"
        ))
    };
    let raw = raw.trim();
    let (digits, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(per).ok_or_else(bad)?;
    if secs == 0 {
        return Err(ApiError::bad_request(format!(
            "{field} must be longer than zero"
        )));
    }
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    window: Option<String>,
    step: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let window = parse_duration("window", q.window.as_deref().unwrap_or("24h"))?;
    if window > MAX_WINDOW {
        return Err(ApiError::bad_request(format!(
            "window is at most 90d, got {}s",
            window.as_secs()
        )));
    }
    let default_step = if window > Duration::from_secs(2 * 86_400) {
        "6h"
    } else {
        "1h"
    };
    let step = parse_duration("step", q.step.as_deref().unwrap_or(default_step))?;
    if step > window {
        return Err(ApiError::bad_request(format!(
            "step ({}s) must not be longer than window ({}s)",
            step.as_secs(),
            window.as_secs()
        )));
    }
    let buckets = window.as_secs().div_ceil(step.as_secs());
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "window/step makes {buckets} buckets, more than {MAX_BUCKETS}; take a longer step"
        )));
    }
    let h = history::history(&state.pool, window, step).await?;
    let lead = &h.lead_times;
    Ok(Json(json!({
        "from": h.from,
        "to": h.to,
        "window_seconds": window.as_secs(),
        "step_seconds": step.as_secs(),
        "buckets": h.buckets,
        "transitions": h.transitions.iter().map(|s| (s.name.clone(), json!(s.counts))).collect::<serde_json::Map<String, Value>>(),
        "merged": h.merged,
        "blocked": h.blocked,
        "spend": h.spend.iter().map(|p| json!({
            "project": p.project,
            "daily_cap_usd": p.daily_cap_usd,
            "days": p.days.iter().map(|(day, usd)| json!({"day": day, "usd": usd})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "lead_time_seconds": {
            "count": lead.count,
            "p50": lead.p50_secs,
            "p90": lead.p90_secs,
            "max": lead.max_secs,
            "histogram": lead.histogram.iter().map(|(le, n)| json!({
                "le": if le.is_finite() { json!(le) } else { json!("+Inf") },
                "count": n,
            })).collect::<Vec<_>>(),
        },
    })))
}

pub async fn workers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "workers": crate::views::workers(&state.pool).await? }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("w", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("w", "15m").unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(
            parse_duration("w", "24h").unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_duration("w", "7d").unwrap(),
            Duration::from_secs(604_800)
        );
        for bad in ["", "h", "1.5h", "3w", "-1h", "99999999999999999999d"] {
            let e = parse_duration("window", bad).unwrap_err();
            assert!(e.message.contains("not a duration"), "{bad}: {}", e.message);
        }
        assert!(parse_duration("step", "0m")
            .unwrap_err()
            .message
            .contains("longer than zero"));
    }
}
