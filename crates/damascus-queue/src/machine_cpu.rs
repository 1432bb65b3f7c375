//! The machine's CPU time, read from Linux's `/proc/stat`, so that the bench can say
//! what one job and one commit cost the whole machine (server, worker and bench
//! together, since they share it) and so how fast the machine could go at that cost
//! with every core busy. Machine-wide: anything else running at the same time counts
//! too. Elsewhere than Linux there is no `/proc/stat`, and the figures are left out.

use std::time::{Duration, Instant};

/// The machine's cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent running anything (user, nice, system, irq, softirq).
    busy: u64,
    /// Busy ticks plus idle and iowait ticks. Steal (the hypervisor running another
    /// guest) is neither: the machine did not have that time to give.
    total: u64,
    /// Online cores (`cpuN` lines).
    cores: u32,
}

/// Parses the text of `/proc/stat`: the aggregate `cpu` line and the count of `cpuN`
/// lines. `None` when the text has no aggregate line with at least the four fields
/// every kernel since 2.6 writes.
pub fn parse(stat: &str) -> Option<CpuTimes> {
    let mut aggregate = None;
    let mut cores = 0u32;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        if name == "cpu" {
            let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
            aggregate = Some(ticks);
        } else if name
            .strip_prefix("cpu")
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            cores += 1;
        }
    }
    let ticks = aggregate?;
    if ticks.len() < 4 || cores == 0 {
        return None;
    }
    // user nice system idle iowait irq softirq steal: steal is left out, and guest
    // time is inside user already.
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Some(CpuTimes {
        busy,
        total: busy + idle,
        cores,
    })
}

/// What the machine did between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// Share of all cores' time spent busy, 0..=1.
    pub busy_share: f64,
    pub cores: u32,
    pub wall: Duration,
}

impl CpuUse {
    /// Busy CPU time summed over all cores.
    pub fn busy_time(&self) -> Duration {
        self.wall.mul_f64(self.busy_share * f64::from(self.cores))
    }

    /// Busy CPU time per operation, for `operations` done in the interval.
    pub fn per_operation(&self, operations: f64) -> Duration {
        if operations <= 0.0 {
            return Duration::ZERO;
        }
        self.busy_time().div_f64(operations)
    }

    /// Operations per second the machine could run at this cost per operation with
    /// every core busy.
    pub fn ceiling(&self, operations: f64) -> f64 {
        let per = self.per_operation(operations).as_secs_f64();
        if per <= 0.0 {
            return f64::INFINITY;
        }
        f64::from(self.cores) / per
    }
}

/// Measures the machine while something runs.
pub struct CpuMeter {
    start: Option<CpuTimes>,
    started: Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        CpuMeter {
            start: read(),
            started: Instant::now(),
        }
    }

    /// `None` where `/proc/stat` cannot be read, or when no tick passed.
    pub fn stop(self) -> Option<CpuUse> {
        let wall = self.started.elapsed();
        let (start, end) = (self.start?, read()?);
        between(start, end, wall)
    }
}

fn read() -> Option<CpuTimes> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn between(start: CpuTimes, end: CpuTimes, wall: Duration) -> Option<CpuUse> {
    let total = end.total.checked_sub(start.total)?;
    let busy = end.busy.checked_sub(start.busy)?;
    if total == 0 {
        return None;
    }
    Some(CpuUse {
        busy_share: busy as f64 / total as f64,
        cores: end.cores,
        wall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 40 0 0\n\
                        cpu0 50 2 25 400 10 2 1 0 0 0\n\
                        cpu1 50 3 25 400 10 1 1 0 0 0\n\
                        intr 12345 0 0\n\
                        ctxt 999\n\
                        cpus_allowed 3\n";

    #[test]
    fn busy_is_everything_but_idle_iowait_and_steal() {
        let times = parse(STAT).expect("parses");
        assert_eq!(times.busy, 100 + 5 + 50 + 3 + 2);
        assert_eq!(times.total, 160 + 800 + 20);
        assert_eq!(times.cores, 2);
    }

    #[test]
    fn text_without_an_aggregate_line_or_cores_is_not_read() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse("cpu 1 2 3\ncpu0 1 2 3 4\n"), None);
        assert_eq!(parse("cpu 1 x 3 4\ncpu0 1 2 3 4\n"), None);
    }

    #[test]
    fn an_interval_gives_cost_per_operation_and_the_ceiling() {
        let start = CpuTimes {
            busy: 1_000,
            total: 4_000,
            cores: 2,
        };
        // Half of both cores' ticks busy over 10 s: 10 core-seconds.
        let end = CpuTimes {
            busy: 2_000,
            total: 6_000,
            cores: 2,
        };
        let used = between(start, end, Duration::from_secs(10)).expect("an interval");
        assert_eq!(used.busy_share, 0.5);
        assert_eq!(used.busy_time(), Duration::from_secs(10));
        assert_eq!(used.per_operation(20_000.0), Duration::from_micros(500));
        assert_eq!(used.ceiling(20_000.0), 4_000.0);
        assert_eq!(between(end, end, Duration::from_secs(1)), None);
        assert_eq!(between(end, start, Duration::from_secs(1)), None);
    }

    #[test]
    fn this_machine_is_measured_where_it_has_proc_stat() {
        if std::path::Path::new("/proc/stat").exists() {
            let times = read().expect("/proc/stat parses");
            assert!(times.cores >= 1 && times.total >= times.busy);
        }
    }
}
