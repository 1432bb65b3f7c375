//! A forge's limits, read from its answers and kept to: when it says to come back
//! later (`retry-after`, GitHub's `x-ratelimit-reset`), and how fast writes may go
//! (GitHub asks for one write at a time per token, at least a second apart).
//!
//! Must not touch: the database (the deadline is shared between processes by the
//! caller, which knows where to keep it) or what a request is for.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::ForgeError;

/// How long to wait when a forge says "slow down" without saying until when: GitHub's
/// documentation says to wait at least a minute for a secondary rate limit.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The longest wait believed: a reset further away than this is a clock or a proxy
/// gone wrong, and an hour is GitHub's whole primary window.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Who a forge's limits apply to: its host and a fingerprint of the token (never the
/// token itself), e.g. `api.github.com#3f2a9c0d1e4b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub host: String,
    pub key: String,
}

impl LimitKey {
    pub(crate) fn new(host: &str, token: &str) -> LimitKey {
        let digest = Sha256::digest(token.as_bytes());
        let fingerprint: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        LimitKey {
            host: host.to_owned(),
            key: format!("{host}#{fingerprint}"),
        }
    }
}

/// The headers of an answer that speak of limits.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitHeaders {
    pub retry_after: Option<String>,
    pub remaining: Option<String>,
    pub reset: Option<String>,
}

impl LimitHeaders {
    pub fn of(response: &reqwest::Response) -> LimitHeaders {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        LimitHeaders {
            retry_after: header("retry-after"),
            remaining: header("x-ratelimit-remaining"),
            reset: header("x-ratelimit-reset"),
        }
    }

    /// `x-ratelimit-remaining: 0`: the primary limit is used up until `reset`.
    pub fn exhausted(&self) -> bool {
        self.remaining.as_deref() == Some("0")
    }

    /// When the forge said to come back, if it said: `retry-after` (seconds, or an
    /// HTTP date) first, then `x-ratelimit-reset` (unix seconds).
    pub fn until(&self, now: SystemTime) -> Option<SystemTime> {
        let after = self
            .retry_after
            .as_deref()
            .and_then(|v| retry_after(v, now));
        let reset = self
            .reset
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        after.or(reset).map(|t| t.min(now + LONGEST_WAIT))
    }

    /// The rate-limit error for an answer that said "slow down": until the time it
    /// named, or `DEFAULT_WAIT` from now.
    pub fn rate_limited(&self, host: &str, what: &str) -> ForgeError {
        let now = SystemTime::now();
        // A reset already past (clocks differ) still waits a moment, not zero.
        let until = self
            .until(now)
            .unwrap_or(now + DEFAULT_WAIT)
            .max(now + Duration::from_secs(1));
        ForgeError::RateLimited {
            host: host.to_owned(),
            until,
            detail: what.to_owned(),
        }
    }
}

/// `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(now + Duration::from_secs(seconds));
    }
    httpdate::parse_http_date(value).ok()
}

/// Write turns shared beyond this process: the caller keeps them where every process
/// that uses the token sees them (Damascus: its database), so a forge's "a second
/// apart per token" holds for a whole deployment.
pub trait WriteTurns: Send + Sync {
    /// Waits for the next write turn of `key`: `gap` after the previous one taken
    /// anywhere. An `Err` says why the turn could not be taken; the write then goes
    /// with this process's own pacing only.
    fn take<'a>(
        &'a self,
        key: &'a LimitKey,
        gap: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Writes one at a time per forge and token, at least `gap` apart: in this process by
/// a lock held through each write, and across processes by `turns` when given.
#[derive(Clone)]
pub(crate) struct WritePacer {
    gap: Duration,
    last: LastWrite,
    key: LimitKey,
    turns: Option<Arc<dyn WriteTurns>>,
}

impl std::fmt::Debug for WritePacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritePacer")
            .field("gap", &self.gap)
            .field("key", &self.key.key)
            .field("shared", &self.turns.is_some())
            .finish()
    }
}

/// When the last write of one forge and token ended (`None`: none yet); its lock is
/// held through each write, so writes go one at a time.
type LastWrite = Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>;

/// One pacer per forge and token in the process: every client of one token shares it.
static PACERS: LazyLock<Mutex<HashMap<String, LastWrite>>> = LazyLock::new(Mutex::default);

impl WritePacer {
    pub fn for_key(
        key: &LimitKey,
        gap: Duration,
        turns: Option<Arc<dyn WriteTurns>>,
    ) -> WritePacer {
        let last = PACERS
            .lock()
            .expect("the pacer map is never poisoned")
            .entry(key.key.clone())
            .or_default()
            .clone();
        WritePacer {
            gap,
            last,
            key: key.clone(),
            turns,
        }
    }

    /// Runs `write` when it is this write's turn: after the previous write of the same
    /// token ended and `gap` has passed since.
    pub async fn paced<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.gap).await;
        }
        if let Some(turns) = &self.turns {
            if let Err(e) = turns.take(&self.key, self.gap).await {
                tracing::warn!(forge = %self.key.host, "cannot take a shared write turn, pacing this process only: {e}");
            }
        }
        let out = write.await;
        *last = Some(tokio::time::Instant::now());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(
        retry_after: Option<&str>,
        remaining: Option<&str>,
        reset: Option<&str>,
    ) -> LimitHeaders {
        LimitHeaders {
            retry_after: retry_after.map(str::to_owned),
            remaining: remaining.map(str::to_owned),
            reset: reset.map(str::to_owned),
        }
    }

    #[test]
    fn when_to_come_back() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(
            headers(Some("30"), None, None).until(now),
            Some(at(1_800_000_030))
        );
        assert_eq!(
            headers(Some("Sat, 16 Jan 2027 08:00:00 GMT"), None, None).until(now),
            Some(at(1_800_000_000 + 3600)),
            "a date an hour or more away is held to the longest wait"
        );
        assert_eq!(
            headers(Some("Sun, 06 Nov 1994 08:49:37 GMT"), None, None).until(now),
            Some(at(784_111_777))
        );
        assert_eq!(
            headers(None, Some("0"), Some("1800000120")).until(now),
            Some(at(1_800_000_120))
        );
        assert_eq!(
            headers(Some("5"), Some("0"), Some("1800000120")).until(now),
            Some(at(1_800_000_005)),
            "retry-after wins over the reset"
        );
        assert_eq!(headers(Some("soon"), None, None).until(now), None);
        assert_eq!(headers(None, None, None).until(now), None);
        assert!(headers(None, Some("0"), None).exhausted());
        assert!(!headers(None, Some("12"), None).exhausted());
    }

    #[test]
    fn a_limit_without_a_time_waits_the_default_and_a_past_one_a_moment() {
        let before = SystemTime::now();
        let ForgeError::RateLimited { until, .. } =
            headers(None, None, None).rate_limited("h", "x")
        else {
            panic!("not a rate limit");
        };
        assert!(until >= before + DEFAULT_WAIT);
        let ForgeError::RateLimited { until, .. } =
            headers(None, Some("0"), Some("1000")).rate_limited("h", "x")
        else {
            panic!("not a rate limit");
        };
        assert!(until > before && until <= SystemTime::now() + Duration::from_secs(1));
    }

    #[test]
    fn keys_name_the_host_and_never_the_token() {
        let key = LimitKey::new("api.github.com", "ghp_secret");
        assert!(key.key.starts_with("api.github.com#"));
        assert!(!key.key.contains("secret"));
        assert_ne!(key, LimitKey::new("api.github.com", "ghp_other"));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_of_one_token_go_one_at_a_time_a_gap_apart() {
        let key = LimitKey::new("pacer.test", "t");
        let pacer = WritePacer::for_key(&key, Duration::from_secs(1), None);
        let other = WritePacer::for_key(&key, Duration::from_secs(1), None);
        let start = tokio::time::Instant::now();
        pacer.paced(async {}).await;
        other.paced(async {}).await;
        pacer.paced(async {}).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
