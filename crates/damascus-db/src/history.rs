//! The system over time, computed from what the database already holds: phase
//! transitions per interval (the outbox's `item.phase_changed` events), merged and
//! blocked per interval, spend per project per day against its daily cap (the cost
//! ledger), and the lead time from ingest to merge of the items merged in the window.
//! Nothing is kept for it: the window reaches back as far as the outbox's retention.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};

use crate::error::DbResult;

/// Transitions into one phase per interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// One count per bucket, oldest first.
    pub counts: Vec<i64>,
}

/// One project's spend per UTC day.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSpend {
    pub project: String,
    pub daily_cap_usd: Option<f64>,
    pub days: Vec<(NaiveDate, f64)>,
}

/// How long merged items took from ingest to merge.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LeadTimes {
    pub count: i64,
    pub p50_secs: Option<f64>,
    pub p90_secs: Option<f64>,
    pub max_secs: Option<f64>,
    /// (upper bound in seconds, items at or under it and over the previous bound); the
    /// last bound is infinite.
    pub histogram: Vec<(f64, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: Duration,
    /// The start of each bucket.
    pub buckets: Vec<DateTime<Utc>>,
    /// Transitions per phase entered (every phase, zeros included).
    pub transitions: Vec<Series>,
    pub merged: Vec<i64>,
    pub blocked: Vec<i64>,
    pub spend: Vec<ProjectSpend>,
    pub lead_times: LeadTimes,
}

/// Upper bounds of the lead-time histogram, in seconds: a minute to a week.
pub const LEAD_TIME_BOUNDS: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0,
];

/// The history of the `window` that ends now, in buckets of `step` (the caller bounds
/// how many buckets that makes).
pub async fn history(pool: &PgPool, window: Duration, step: Duration) -> DbResult<History> {
    let window_secs = window.as_secs_f64();
    let step_secs = step.as_secs_f64().max(1.0);
    // Buckets are aligned to multiples of the step since the epoch, so two calls a
    // moment apart agree on their edges.
    let rows = sqlx::query(
        "with bounds as (
             select date_bin(make_interval(secs => $2), now() - make_interval(secs => $1),
                             timestamptz 'epoch') as from_ts
         ), buckets as (
             select generate_series(b.from_ts, now(), make_interval(secs => $2)) as starts_at
             from bounds b
         ), changes as (
             select date_bin(make_interval(secs => $2), e.created_at, timestamptz 'epoch') as bucket,
                    e.payload ->> 'to' as to_phase, count(*) as n
             from events_outbox e, bounds b
             where e.kind = 'item.phase_changed' and e.created_at >= b.from_ts
             group by 1, 2
         )
         select bk.starts_at, p.phase::text as phase, coalesce(c.n, 0) as n
         from buckets bk
         cross join unnest(enum_range(null::work_phase)) as p (phase)
         left join changes c on c.bucket = bk.starts_at and c.to_phase = p.phase::text
         order by bk.starts_at, p.phase",
    )
    .bind(window_secs)
    .bind(step_secs)
    .fetch_all(pool)
    .await?;
    let mut buckets: Vec<DateTime<Utc>> = Vec::new();
    let mut transitions: Vec<Series> = Vec::new();
    for row in &rows {
        let starts_at: DateTime<Utc> = row.try_get("starts_at")?;
        if buckets.last() != Some(&starts_at) {
            buckets.push(starts_at);
        }
        let phase: String = row.try_get("phase")?;
        let n: i64 = row.try_get("n")?;
        match transitions.iter_mut().find(|s| s.name == phase) {
            Some(series) => series.counts.push(n),
            None => transitions.push(Series {
                name: phase,
                counts: vec![n],
            }),
        }
    }
    let of = |phase: &str| {
        transitions
            .iter()
            .find(|s| s.name == phase)
            .map(|s| s.counts.clone())
            .unwrap_or_else(|| vec![0; buckets.len()])
    };
    let merged = of("merged");
    let blocked = of("blocked");
    let from = buckets.first().copied().unwrap_or_else(Utc::now);

    let spend_rows = sqlx::query(
        "with days as (
             select generate_series(date_trunc('day', $1::timestamptz at time zone 'UTC'),
                                    date_trunc('day', now() at time zone 'UTC'),
                                    interval '1 day')::date as day
         ), spent as (
             select i.project_id, (c.created_at at time zone 'UTC')::date as day, sum(c.usd) as usd
             from cost_ledger c join work_items i on i.id = c.item_id
             where c.created_at >= date_trunc('day', $1::timestamptz at time zone 'UTC') at time zone 'UTC'
             group by 1, 2
         )
         select p.name, p.daily_cost_budget_usd::float8 as cap, d.day,
                coalesce(s.usd, 0)::float8 as usd
         from projects p cross join days d
         left join spent s on s.project_id = p.id and s.day = d.day
         order by p.name, d.day",
    )
    .bind(from)
    .fetch_all(pool)
    .await?;
    let mut spend: Vec<ProjectSpend> = Vec::new();
    for row in &spend_rows {
        let project: String = row.try_get("name")?;
        let day: NaiveDate = row.try_get("day")?;
        let usd: f64 = row.try_get("usd")?;
        if spend.last().is_none_or(|p| p.project != project) {
            spend.push(ProjectSpend {
                project,
                daily_cap_usd: row.try_get("cap")?,
                days: Vec::new(),
            });
        }
        spend
            .last_mut()
            .expect("pushed above")
            .days
            .push((day, usd));
    }

    let lead = sqlx::query(
        "select count(*) as n,
                percentile_cont(0.5) within group (order by secs) as p50,
                percentile_cont(0.9) within group (order by secs) as p90,
                max(secs) as max,
                array_agg(secs) filter (where secs is not null) as all_secs
         from (
             select extract(epoch from i.phase_entered_at - i.created_at)::float8 as secs
             from work_items i
             where i.phase = 'merged' and i.phase_entered_at >= $1
         ) merged",
    )
    .bind(from)
    .fetch_one(pool)
    .await?;
    let all: Vec<f64> = lead
        .try_get::<Option<Vec<f64>>, _>("all_secs")?
        .unwrap_or_default();
    let mut histogram: Vec<(f64, i64)> = LEAD_TIME_BOUNDS.iter().map(|b| (*b, 0)).collect();
    histogram.push((f64::INFINITY, 0));
    for secs in all {
        if let Some(slot) = histogram.iter_mut().find(|(bound, _)| secs <= *bound) {
            slot.1 += 1;
        }
    }
    Ok(History {
        from,
        to: Utc::now(),
        step,
        buckets,
        transitions,
        merged,
        blocked,
        spend,
        lead_times: LeadTimes {
            count: lead.try_get("n")?,
            p50_secs: lead.try_get("p50")?,
            p90_secs: lead.try_get("p90")?,
            max_secs: lead.try_get("max")?,
            histogram,
        },
    })
}
