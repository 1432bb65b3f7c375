//! The knobs of a worker pool, with defaults a deployment can live with.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The GLOBAL cap: phases running at once across every worker on the database.
    /// `Some(n)` sets it when the worker starts; `None` keeps the one in force. This
    /// process also runs at most that many.
    pub concurrency: Option<u32>,
    /// How long a claim lasts without a keep-alive; a killed worker's job runs again
    /// this long after its last keep-alive.
    pub lease: Duration,
    /// Safety-net poll when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// On shutdown, how long running phases may take to finish before they are
    /// stopped and their jobs released.
    pub shutdown_grace: Duration,
    pub retry: RetryPolicy,
    /// How often this worker runs the reaper (dead jobs, stale workers, jobless items).
    pub reap_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            concurrency: None,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            reap_interval: Duration::from_secs(15),
        }
    }
}

impl QueueConfig {
    /// Keep-alives go out three times per lease, so one lost round trip loses nothing.
    pub fn keep_alive_every(&self) -> Duration {
        self.lease / 3
    }
}

/// Exponential backoff with jitter for transient errors.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before run number `failed_runs + 1`: `base * 2^(failed_runs-1)`, capped,
    /// then jittered into its upper half so that retries of many jobs spread out.
    pub fn delay(&self, failed_runs: u32, jitter: f64) -> Duration {
        let exponent = failed_runs.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1 << exponent).min(self.max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        assert_eq!(policy.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(policy.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(policy.delay(9, 1.0), Duration::from_secs(10));
        assert_eq!(policy.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(policy.delay(u32::MAX, 1.0), Duration::from_secs(10));
    }
}
