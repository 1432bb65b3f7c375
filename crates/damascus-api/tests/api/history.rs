//! `GET /v1/stats/history` computed from the outbox, the ledger and the items, and
//! `GET /v1/workers`.

use reqwest::StatusCode;
use serde_json::Value;

use super::{message, TestApp};

fn sum(series: &Value) -> i64 {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn history_counts_transitions_spend_and_lead_times() {
    let app = TestApp::spawn().await;
    let first = app.ingest("web", "First").await;
    let second = app.ingest("web", "Second").await;
    let pool = &app.db.pool;
    sqlx::query("update projects set daily_cost_budget_usd = 1 where name = 'web'")
        .execute(pool)
        .await
        .unwrap();
    // Transitions: three into build in the last minutes, one merged two hours ago, one
    // blocked three hours ago, and one two days ago (outside a 24 h window). The recent
    // ones are kept inside the current hour's bucket, also when the test runs in the
    // first minutes of an hour.
    for (to, ago) in [
        ("build", "0 minutes"),
        ("build", "1 minute"),
        ("build", "2 minutes"),
        ("merged", "2 hours"),
        ("blocked", "3 hours"),
        ("build", "2 days"),
    ] {
        sqlx::query(
            "insert into events_outbox (item_id, project_id, kind, payload, created_at)
             select $1, project_id, 'item.phase_changed', jsonb_build_object('from', 'spec', 'to', $2::text),
                    case when $3::interval < interval '1 hour'
                         then greatest(now() - $3::interval, date_bin(interval '1 hour', now(), timestamptz 'epoch'))
                         else now() - $3::interval end
             from work_items where id = $1",
        )
        .bind(first)
        .bind(to)
        .bind(ago)
        .execute(pool)
        .await
        .unwrap();
    }
    for (usd, ago) in [(0.25, "0 hours"), (0.5, "0 hours"), (0.125, "1 day")] {
        sqlx::query(
            "insert into cost_ledger (item_id, phase, attempt, source, model, usd, created_at)
             values ($1, 'build', 1, 'agent', 'test', $2, now() - $3::interval)",
        )
        .bind(second)
        .bind(usd)
        .bind(ago)
        .execute(pool)
        .await
        .unwrap();
    }
    // Merged ten minutes after it was ingested, an hour ago (the phase first: a
    // trigger stamps phase_entered_at when the phase changes).
    for sql in [
        "update work_items set phase = 'merged' where id = $1",
        "update work_items set created_at = now() - interval '70 minutes',
                phase_entered_at = now() - interval '60 minutes' where id = $1",
    ] {
        sqlx::query(sql).bind(first).execute(pool).await.unwrap();
    }

    let (status, h) = app.get("/v1/stats/history?window=24h&step=1h").await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["window_seconds"], 86_400);
    assert_eq!(h["step_seconds"], 3600);
    let buckets = h["buckets"].as_array().unwrap().len();
    assert!((24..=26).contains(&buckets), "{buckets}");
    assert_eq!(h["merged"].as_array().unwrap().len(), buckets);
    assert_eq!(sum(&h["transitions"]["build"]), 3, "{h}");
    assert_eq!(
        h["transitions"]["build"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        3,
        "the three recent ones fall in the last bucket"
    );
    assert_eq!(sum(&h["merged"]), 1);
    assert_eq!(sum(&h["blocked"]), 1);
    assert_eq!(sum(&h["transitions"]["spec"]), 0);
    let web = h["spend"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project"] == "web")
        .unwrap();
    assert_eq!(web["daily_cap_usd"], 1.0);
    let days = web["days"].as_array().unwrap();
    assert_eq!(days.last().unwrap()["usd"], 0.75, "{web}");
    assert_eq!(days[days.len() - 2]["usd"], 0.125, "{web}");
    let lead = &h["lead_time_seconds"];
    assert_eq!(lead["count"], 1, "{lead}");
    assert!(
        (lead["p50"].as_f64().unwrap() - 600.0).abs() < 1.0,
        "{lead}"
    );
    let in_15m = lead["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["le"] == 900.0)
        .unwrap();
    assert_eq!(in_15m["count"], 1, "{lead}");

    // A week in days sees the event from two days ago too.
    let (status, week) = app.get("/v1/stats/history?window=7d&step=1d").await;
    assert_eq!(status, StatusCode::OK, "{week}");
    assert_eq!(sum(&week["transitions"]["build"]), 4, "{week}");
}

#[tokio::test]
async fn bad_history_queries_say_what_was_wrong() {
    let app = TestApp::spawn().await;
    for (query, needle) in [
        ("window=yesterday", "window \"yesterday\" is not a duration"),
        ("window=24h&step=1.5h", "step \"1.5h\" is not a duration"),
        ("window=1h&step=2h", "must not be longer than window"),
        ("window=30d&step=1m", "take a longer step"),
        ("window=100d", "at most 90d"),
        ("window=0h", "longer than zero"),
        ("since=1h", "unknown field"),
    ] {
        let (status, body) = app.get(&format!("/v1/stats/history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(message(&body).contains(needle), "{query}: {body}");
    }
}

#[tokio::test]
async fn workers_are_listed_with_their_heartbeat() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/v1/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["workers"], serde_json::json!([]));
}
