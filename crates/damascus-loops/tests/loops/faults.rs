//! Faults a forge stand-in plays on top of its API: canned answers to the first few
//! requests that match (a rate limit with `retry-after`, a 500), and a log of every
//! request with when it arrived and how it was answered, to check what reached the
//! forge and when.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

/// Answer the next `times` requests of `method` whose path ends with `path_suffix`
/// with `status`, `headers` and `body`, instead of the forge's own answer.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path_suffix: &'static str,
    pub times: u32,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// One request as the forge saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Whether a rule answered it.
    pub faulted: bool,
}

#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Faults {
    pub fn with(rules: Vec<Rule>) -> Faults {
        Faults {
            rules: Arc::new(Mutex::new(rules)),
            seen: Arc::default(),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests a rule answered.
    pub fn faulted(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.faulted).collect()
    }

    /// Every request that arrived after `from` and before `until`.
    pub fn between(&self, from: SystemTime, until: SystemTime) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.at > from && s.at < until)
            .collect()
    }

    /// The canned answer for a request, if a rule still matches it.
    fn take(&self, method: &str, path: &str) -> Option<Rule> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.ends_with(r.path_suffix))?;
        rule.times -= 1;
        Some(rule.clone())
    }

    /// The layer that plays the faults and logs every request; put it innermost, so the
    /// log holds what passed the forge's authentication too.
    pub async fn middleware(
        self,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> Response {
        let at = SystemTime::now();
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let (response, faulted) = match self.take(&method, &path) {
            Some(rule) => {
                let mut response = (
                    StatusCode::from_u16(rule.status).unwrap(),
                    Json(rule.body.clone()),
                )
                    .into_response();
                for (name, value) in &rule.headers {
                    response.headers_mut().insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(value).unwrap(),
                    );
                }
                (response, true)
            }
            None => (next.run(request).await, false),
        };
        self.seen.lock().unwrap().push(Seen {
            at,
            method,
            path,
            status: response.status().as_u16(),
            faulted,
        });
        response
    }
}

/// A rate limit on the next matching request: `status` with `retry-after: secs`.
pub fn rate_limit(method: &'static str, path_suffix: &'static str, status: u16, secs: u64) -> Rule {
    Rule {
        method,
        path_suffix,
        times: 1,
        status,
        headers: vec![("retry-after", secs.to_string())],
        body: serde_json::json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        }),
    }
}

/// The time a rate-limited answer said to come back: its arrival plus `retry-after`.
pub fn deadline_of(seen: &Seen, secs: u64) -> SystemTime {
    seen.at + Duration::from_secs(secs)
}
