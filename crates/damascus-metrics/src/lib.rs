//! damascus-metrics: the Prometheus metrics of one process, by the conventions — base
//! units, `_total` on counters, `_seconds` on durations, bounded label sets (phases,
//! verdicts, projects, webhooks, routes; never an item id).
//!
//! - Counters and histograms count what *this process* did (its workers, its relay, its
//!   API) since it started; Prometheus sums them over the processes it scrapes, and
//!   `rate()` handles restarts.
//! - Gauges describe the current state of the whole system, read from the database at
//!   each scrape by the API and built fresh for that scrape (`render`), so a label that
//!   is gone (a removed webhook) is gone from the next scrape too.
//!
//! The `prometheus` crate holds the metrics and writes the text format (0.0.4) that
//! `promtool check metrics` and every Prometheus read; its counters are floats, so
//! dollars are counted as dollars. The names, help texts and buckets live here and
//! nowhere else. This crate knows no database, HTTP or phase logic: callers hand it
//! plain values.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

/// Phases run from a second to an hour or more (an agent's build, a test suite).
const PHASE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
/// Pickup takes milliseconds when a slot is free, minutes when the cap is full.
const PICKUP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// HTTP answers take milliseconds; an event stream lasts as long as its client.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// This process's counters and histograms.
struct Process {
    registry: Registry,
    transitions: IntCounterVec,
    jobs_claimed: IntCounter,
    spend_usd: CounterVec,
    webhook_deliveries: IntCounterVec,
    phase_duration: HistogramVec,
    pickup_latency: HistogramVec,
    http_duration: HistogramVec,
}

fn process() -> &'static Process {
    static PROCESS: OnceLock<Process> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let transitions = counters(
            "damascus_transitions_total",
            "Phase transitions this process's workers recorded, by the phase left, the phase entered and the verdict.",
            &["from", "to", "verdict"],
        );
        let webhook_deliveries = counters(
            "damascus_webhook_deliveries_total",
            "Webhook delivery attempts this process made, by webhook and outcome (delivered, failed: retried later, dead: given up).",
            &["webhook", "outcome"],
        );
        let jobs_claimed = IntCounter::new(
            "damascus_jobs_claimed_total",
            "Jobs this process's workers claimed.",
        )
        .expect("a valid counter");
        registry
            .register(Box::new(jobs_claimed.clone()))
            .expect("registered once");
        let spend_usd = CounterVec::new(
            Opts::new(
                "damascus_spend_usd_total",
                "US dollars the model and agent calls this process ran reported spending, by project and kind (llm, agent).",
            ),
            &["project", "kind"],
        )
        .expect("a valid counter");
        registry
            .register(Box::new(spend_usd.clone()))
            .expect("registered once");
        let phase_duration = histogram(
            "damascus_phase_duration_seconds",
            "How long phases ran on this process's workers, by phase.",
            &["phase"],
            PHASE_BUCKETS,
        );
        let pickup_latency = histogram(
            "damascus_pickup_latency_seconds",
            "How long a job had been ready when this process's workers claimed it.",
            &[],
            PICKUP_BUCKETS,
        );
        let http_duration = histogram(
            "damascus_http_request_duration_seconds",
            "HTTP requests this process answered, by route pattern and status.",
            &["route", "status"],
            HTTP_BUCKETS,
        );
        Process {
            registry,
            transitions,
            jobs_claimed,
            spend_usd,
            webhook_deliveries,
            phase_duration,
            pickup_latency,
            http_duration,
        }
    })
}

/// A verdict recorded for an item, moving it from `from` to `to`.
pub fn transition(from: &str, to: &str, verdict: &str) {
    process()
        .transitions
        .with_label_values(&[from, to, verdict])
        .inc();
}

/// Jobs claimed, each with how long it had been ready.
pub fn jobs_claimed(waited: impl IntoIterator<Item = Duration>) {
    let p = process();
    let latency = p.pickup_latency.with_label_values(&[] as &[&str]);
    for wait in waited {
        latency.observe(wait.as_secs_f64());
        p.jobs_claimed.inc();
    }
}

/// A phase that ran for `ran`.
pub fn phase_ran(phase: &str, ran: Duration) {
    process()
        .phase_duration
        .with_label_values(&[phase])
        .observe(ran.as_secs_f64());
}

/// Dollars a call reported spending (`kind`: llm or agent).
pub fn spent(project: &str, kind: &str, usd: f64) {
    if usd > 0.0 && usd.is_finite() {
        process()
            .spend_usd
            .with_label_values(&[project, kind])
            .inc_by(usd);
    }
}

/// One delivery attempt's outcome: `delivered`, `failed` (retried later) or `dead`.
pub fn webhook_delivery(webhook: &str, outcome: &str) {
    process()
        .webhook_deliveries
        .with_label_values(&[webhook, outcome])
        .inc();
}

/// An HTTP request answered; `route` is the route's pattern (`/v1/items/{id}`), never
/// the path a client sent.
pub fn http_request(route: &str, status: u16, took: Duration) {
    process()
        .http_duration
        .with_label_values(&[route, &status.to_string()])
        .observe(took.as_secs_f64());
}

/// A gauge of the current state: its name, help, label names, and one value per set of
/// label values.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Vec<(Vec<String>, f64)>,
}

impl Gauge {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Gauge {
        Gauge {
            name,
            help,
            labels,
            values: Vec::new(),
        }
    }

    /// A gauge without labels.
    pub fn single(name: &'static str, help: &'static str, value: f64) -> Gauge {
        Gauge::new(name, help, &[]).with(Vec::new(), value)
    }

    /// One value; `labels` in the order the gauge names them.
    pub fn with(mut self, labels: Vec<String>, value: f64) -> Gauge {
        self.values.push((labels, value));
        self
    }
}

/// Why an exposition could not be written: a gauge the caller built wrongly.
#[derive(Debug)]
pub struct RenderError(prometheus::Error);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write the metrics: {}", self.0)
    }
}

impl std::error::Error for RenderError {}

/// The exposition (Prometheus text format 0.0.4): this process's counters and
/// histograms, and `gauges` as they are now.
pub fn render(gauges: Vec<Gauge>) -> Result<String, RenderError> {
    let now = Registry::new();
    for g in gauges {
        let vec = GaugeVec::new(Opts::new(g.name, g.help), g.labels).map_err(RenderError)?;
        for (labels, value) in &g.values {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            vec.get_metric_with_label_values(&labels)
                .map_err(RenderError)?
                .set(*value);
        }
        now.register(Box::new(vec)).map_err(RenderError)?;
    }
    let mut families = process().registry.gather();
    families.extend(now.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(RenderError)?;
    Ok(String::from_utf8(out).expect("the text format is UTF-8"))
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_rise_and_gauges_are_this_scrapes() {
        let line = r#"damascus_transitions_total{from="spec",to="build",verdict="pass"}"#;
        let before = sample(&render(Vec::new()).unwrap(), line).unwrap_or(0.0);
        transition("spec", "build", "pass");
        spent("web", "llm", 0.25);
        spent("web", "llm", 0.5);
        let gauge = Gauge::new("damascus_items", "Items per phase.", &["phase"])
            .with(vec!["spec".into()], 3.0);
        let text = render(vec![gauge]).unwrap();
        assert_eq!(sample(&text, line), Some(before + 1.0), "{text}");
        assert!(
            sample(
                &text,
                r#"damascus_spend_usd_total{kind="llm",project="web"}"#
            )
            .is_some_and(|usd| usd >= 0.75),
            "{text}"
        );
        assert_eq!(sample(&text, r#"damascus_items{phase="spec"}"#), Some(3.0));
        assert!(text.contains("# TYPE damascus_transitions_total counter"));
        // The next scrape has only the gauges it is given.
        assert!(!render(Vec::new()).unwrap().contains("damascus_items{"));
    }

    #[test]
    fn a_gauge_with_the_wrong_labels_is_an_error_not_a_panic() {
        let gauge = Gauge::new("damascus_bad", "Bad.", &["a"]).with(vec![], 1.0);
        assert!(render(vec![gauge]).is_err());
    }
}
