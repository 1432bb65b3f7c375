//! The machine's CPU time, read from Linux's `/proc/stat`, so that the bench can say
//! what one job and one commit cost the whole machine (server, worker and bench
//! together, since they share it) and so how fast the machine could go at that cost
//! with every core busy. Machine-wide: anything else running at the same time counts
//! too, and in a container whose `/proc` is the host's, the figures are the host's. This process's own share (`/proc/self/stat`: the bench's client, or its
//! worker pool) is told apart from the rest (mostly the server). Elsewhere than Linux
//! there is no `/proc/stat`, and the figures are left out.

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
    /// This process's user and system ticks, in the same unit (`USER_HZ`).
    own: Option<u64>,
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
        own: None,
    })
}

/// This process's user + system ticks from the text of `/proc/self/stat` (fields 14
/// and 15; the command name in field 2 may hold spaces and parentheses, so fields
/// are counted from its closing parenthesis).
pub fn parse_own(self_stat: &str) -> Option<u64> {
    let after_name = &self_stat[self_stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// What the machine did between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// Share of all cores' time spent busy, 0..=1.
    pub busy_share: f64,
    /// Share of all cores' time this process ran, 0..=busy_share.
    pub own_share: Option<f64>,
    pub cores: u32,
    pub wall: Duration,
}

impl CpuUse {
    /// Busy CPU time summed over all cores.
    pub fn busy_time(&self) -> Duration {
        self.time_of(self.busy_share)
    }

    /// CPU time summed over all cores for a share of all cores' time.
    fn time_of(&self, share: f64) -> Duration {
        self.wall.mul_f64(share * f64::from(self.cores))
    }

    /// Busy CPU time per operation, for `operations` done in the interval.
    pub fn per_operation(&self, operations: f64) -> Duration {
        self.share_per_operation(self.busy_share, operations)
    }

    /// This process's CPU time per operation.
    pub fn own_per_operation(&self, operations: f64) -> Option<Duration> {
        Some(self.share_per_operation(self.own_share?, operations))
    }

    fn share_per_operation(&self, share: f64, operations: f64) -> Duration {
        if operations <= 0.0 {
            return Duration::ZERO;
        }
        self.time_of(share).div_f64(operations)
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
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| parse_own(&text));
    Some(CpuTimes {
        own,
        ..parse(&std::fs::read_to_string("/proc/stat").ok()?)?
    })
}

fn between(start: CpuTimes, end: CpuTimes, wall: Duration) -> Option<CpuUse> {
    let total = end.total.checked_sub(start.total)?;
    let busy = end.busy.checked_sub(start.busy)?;
    if total == 0 {
        return None;
    }
    let own = match (start.own, end.own) {
        (Some(start), Some(end)) => end.checked_sub(start),
        _ => None,
    };
    Some(CpuUse {
        busy_share: busy as f64 / total as f64,
        // Ticks of this process land in the machine's busy ticks too; the two are
        // read a moment apart, so clamp.
        own_share: own.map(|own| (own as f64 / total as f64).min(busy as f64 / total as f64)),
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
            own: Some(300),
        };
        // Half of both cores' ticks busy over 10 s: 10 core-seconds, of which this
        // process ran a fifth.
        let end = CpuTimes {
            busy: 2_000,
            total: 6_000,
            cores: 2,
            own: Some(500),
        };
        let used = between(start, end, Duration::from_secs(10)).expect("an interval");
        assert_eq!(used.busy_share, 0.5);
        assert_eq!(used.own_share, Some(0.1));
        assert_eq!(used.busy_time(), Duration::from_secs(10));
        assert_eq!(used.per_operation(20_000.0), Duration::from_micros(500));
        assert_eq!(
            used.own_per_operation(20_000.0),
            Some(Duration::from_micros(100))
        );
        assert_eq!(used.ceiling(20_000.0), 4_000.0);
        let unknown_own = CpuTimes { own: None, ..end };
        let used = between(start, unknown_own, Duration::from_secs(10)).expect("an interval");
        assert_eq!(used.own_share, None);
        assert_eq!(used.own_per_operation(1.0), None);
        assert_eq!(between(end, end, Duration::from_secs(1)), None);
        assert_eq!(between(end, start, Duration::from_secs(1)), None);
    }

    #[test]
    fn a_process_s_ticks_are_counted_after_its_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...; this command name holds a space and a parenthesis.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 750 250 0 0 20 0 9 0";
        assert_eq!(parse_own(stat), Some(1_000));
        assert_eq!(parse_own("4242 (name) S 1 2"), None);
        assert_eq!(parse_own("no parenthesis"), None);
    }

    #[test]
    fn this_machine_is_measured_where_it_has_proc_stat() {
        if std::path::Path::new("/proc/stat").exists() {
            let times = read().expect("/proc/stat parses");
            assert!(times.cores >= 1 && times.total >= times.busy);
            assert!(times.own.is_some(), "/proc/self/stat parses");
        }
    }
}
