//! The baseline a queue's throughput is compared with: the best single-row commit rate
//! the server reaches. A client that does not saturate the server reads a low rate and
//! inflates every ratio, so the baseline is the higher of two measurements of the same
//! insert into `bench_commits` in autocommit:
//!
//! - this crate's client (sqlx, one task per connection on the command's
//!   multi-threaded runtime) at a few client counts (`client_counts`, then
//!   `further_count` while more clients still pay), keeping the best; the machine's
//!   CPU per commit is measured on that best run;
//! - pgbench, when it is installed (PATH, then `/usr/lib/postgresql/*/bin` from the
//!   newest major down), at the same client counts with one thread per core, running
//!   `sql/pgbench-insert.sql` with prepared statements, keeping the best.
//!
//! Each run lasts the bench's `commit_duration`; each client count opens its
//! connections before its clock starts (pgbench reports its rate "without initial
//! connection time" too).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use damascus_db::DbResult;
use sqlx::PgPool;

use crate::machine_cpu::{CpuMeter, CpuUse};
use crate::statements;

/// One client count of this crate's own client.
#[derive(Debug, Clone)]
pub struct ClientRun {
    pub clients: u32,
    pub commits_per_second: f64,
    /// The machine's CPU use during the run.
    pub cpu: Option<CpuUse>,
}

/// One client count of pgbench.
#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchRun {
    pub clients: u32,
    pub threads: u32,
    pub commits_per_second: f64,
}

/// What pgbench gave, or why it gave nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Pgbench {
    /// Every client count ran (at least one).
    Measured(Vec<PgbenchRun>),
    /// No `pgbench` on PATH or under `/usr/lib/postgresql/*/bin`.
    NotInstalled,
    /// pgbench ran and failed; the baseline is this crate's client alone.
    Failed { reason: String },
}

/// Both measurements of one round.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// This crate's client, one run per client count (at least one).
    pub own: Vec<ClientRun>,
    pub pgbench: Pgbench,
}

/// Which measurement gave the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    OwnClient,
    Pgbench,
}

impl Baseline {
    /// This crate's client at its best client count.
    pub fn own_best(&self) -> &ClientRun {
        self.own
            .iter()
            .max_by(|a, b| a.commits_per_second.total_cmp(&b.commits_per_second))
            .expect("the baseline has at least one client count")
    }

    /// pgbench at its best client count, when it ran.
    pub fn pgbench_best(&self) -> Option<&PgbenchRun> {
        match &self.pgbench {
            Pgbench::Measured(runs) => runs
                .iter()
                .max_by(|a, b| a.commits_per_second.total_cmp(&b.commits_per_second)),
            Pgbench::NotInstalled | Pgbench::Failed { .. } => None,
        }
    }

    /// The baseline: the higher of the two bests.
    pub fn commit_rate(&self) -> f64 {
        let own = self.own_best().commits_per_second;
        self.pgbench_best()
            .map_or(own, |p| own.max(p.commits_per_second))
    }

    pub fn source(&self) -> Source {
        match self.pgbench_best() {
            Some(p) if p.commits_per_second > self.own_best().commits_per_second => Source::Pgbench,
            _ => Source::OwnClient,
        }
    }

    /// The machine's CPU time per commit on the own client's best run: pgbench is
    /// another process, so only this client's runs tell its part from the server's.
    pub fn cpu_per_commit(&self) -> Option<Duration> {
        let best = self.own_best();
        let cpu = best.cpu?;
        Some(cpu.per_operation(best.commits_per_second * cpu.wall.as_secs_f64()))
    }

    /// The client's own part of `cpu_per_commit`.
    pub fn own_cpu_per_commit(&self) -> Option<Duration> {
        let best = self.own_best();
        let cpu = best.cpu?;
        cpu.own_per_operation(best.commits_per_second * cpu.wall.as_secs_f64())
    }
}

/// At most this many client counts per measurement.
const MAX_CLIENT_COUNTS: usize = 6;

/// A doubling of the clients must raise the rate by this much to try another one.
const WORTH_DOUBLING: f64 = 1.05;

/// The client counts tried first: the pool's `concurrency`, twice and four times that
/// (more sessions waiting on one WAL flush commit together), none above `limit`, at
/// least one.
pub fn client_counts(concurrency: u32, limit: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = [1, 2, 4]
        .iter()
        .map(|k| concurrency.saturating_mul(*k).clamp(1, limit.max(1)))
        .collect();
    counts.dedup();
    counts
}

/// The next client count after `runs` (in the order tried): twice the last one (at
/// most `limit`) while the last one is the best so far and beat the one before it by
/// `WORTH_DOUBLING`, so a server that still gains from more sessions is followed up.
pub fn further_count(runs: &[ClientRun], limit: u32) -> Option<u32> {
    let [.., before, last] = runs else {
        return None;
    };
    let best = runs
        .iter()
        .all(|r| r.commits_per_second <= last.commits_per_second);
    let gained = last.commits_per_second >= WORTH_DOUBLING * before.commits_per_second;
    (runs.len() < MAX_CLIENT_COUNTS && best && gained && last.clients < limit)
        .then(|| last.clients.saturating_mul(2).min(limit))
}

/// Measures the baseline in `pool`'s scratch database (migrated, with the bench's
/// tables), reached by pgbench at `database_url`: `counts` first, then
/// `further_count`'s up to `limit`; pgbench at the same counts. `pool` must allow
/// `limit` connections.
pub async fn measure(
    pool: &PgPool,
    database_url: &str,
    counts: &[u32],
    limit: u32,
    duration: Duration,
) -> DbResult<Baseline> {
    let mut own: Vec<ClientRun> = Vec::with_capacity(MAX_CLIENT_COUNTS);
    let mut next = counts.first().copied();
    while let Some(clients) = next {
        let meter = CpuMeter::start();
        let rate = statements::single_row_commit_rate(pool, clients, duration).await?;
        own.push(ClientRun {
            clients,
            commits_per_second: rate,
            cpu: meter.stop(),
        });
        next = counts
            .get(own.len())
            .copied()
            .or_else(|| further_count(&own, limit));
    }
    let counts: Vec<u32> = own.iter().map(|r| r.clients).collect();
    let pgbench = match find_pgbench() {
        None => Pgbench::NotInstalled,
        Some(program) => {
            let database_url = database_url.to_owned();
            tokio::task::spawn_blocking(move || {
                run_pgbench(&program, &database_url, &counts, duration)
            })
            .await
            .expect("the pgbench runner does not panic")
        }
    };
    Ok(Baseline { own, pgbench })
}

/// `pgbench` on PATH, else the newest `/usr/lib/postgresql/*/bin/pgbench`.
pub fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    on_path
        .into_iter()
        .chain(versioned.into_iter().map(|(_, dir)| dir))
        .map(|dir| dir.join("pgbench"))
        .find(|program| program.is_file())
}

fn run_pgbench(program: &Path, database_url: &str, counts: &[u32], duration: Duration) -> Pgbench {
    let failed = |reason: String| Pgbench::Failed { reason };
    let script = match write_script() {
        Ok(script) => script,
        Err(e) => return failed(format!("cannot write its script: {e}")),
    };
    // The password goes through the environment, not the command line, where any
    // user of the machine could read it.
    let (url, password) = match without_password(database_url) {
        Ok(parts) => parts,
        Err(reason) => return failed(reason),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mut runs = Vec::with_capacity(counts.len());
    for &clients in counts {
        let threads = clients.min(cores).max(1);
        let mut command = Command::new(program);
        command
            .args(["--no-vacuum", "--protocol=prepared", "--file"])
            .arg(script.path())
            .arg(format!("--client={clients}"))
            .arg(format!("--jobs={threads}"))
            .arg(format!("--time={}", duration.as_secs().max(1)))
            .arg(&url);
        if let Some(password) = &password {
            command.env("PGPASSWORD", password);
        }
        let output = match command.output() {
            Ok(output) => output,
            Err(e) => return failed(format!("cannot run {}: {e}", program.display())),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            return failed(format!(
                "{} with {clients} clients exited with {}: {}",
                program.display(),
                output.status,
                last.unwrap_or("no message")
            ));
        }
        match parse_tps(&stdout) {
            Some(commits_per_second) => runs.push(PgbenchRun {
                clients,
                threads,
                commits_per_second,
            }),
            None => return failed(format!("no tps line in its output:\n{stdout}")),
        }
    }
    if runs.is_empty() {
        return failed("no client count to run".into());
    }
    Pgbench::Measured(runs)
}

fn write_script() -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut script = tempfile::Builder::new()
        .prefix("damascus-bench-")
        .suffix(".sql")
        .tempfile()?;
    script.write_all(include_str!("../sql/pgbench-insert.sql").as_bytes())?;
    script.flush()?;
    Ok(script)
}

/// `url` without its password, and the password.
fn without_password(url: &str) -> Result<(String, Option<String>), String> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| format!("the server URL does not parse: {e}"))?;
    let password = parsed.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    parsed
        .set_password(None)
        .map_err(|()| "the server URL cannot hold a password".to_owned())?;
    Ok((parsed.to_string(), password))
}

/// The transactions per second pgbench printed: the rate without connection start-up
/// (PostgreSQL 14 and later print only that one; older ones print it as "excluding
/// connections establishing").
pub fn parse_tps(stdout: &str) -> Option<f64> {
    let rate = |line: &str| -> Option<f64> {
        line.trim()
            .strip_prefix("tps = ")?
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim().starts_with("tps = "))
        .collect();
    lines
        .iter()
        .find(|l| l.contains("without initial connection") || l.contains("excluding connections"))
        .or(lines.first())
        .and_then(|l| rate(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_counts_double_twice_within_the_server_s_limit() {
        assert_eq!(client_counts(8, 100), vec![8, 16, 32]);
        assert_eq!(client_counts(2, 100), vec![2, 4, 8]);
        assert_eq!(client_counts(8, 20), vec![8, 16, 20]);
        assert_eq!(client_counts(8, 8), vec![8]);
        assert_eq!(client_counts(8, 0), vec![1]);
    }

    #[test]
    fn pgbench_s_rate_is_read_without_connection_start_up() {
        let fifteen = "transaction type: /tmp/x.sql\nscaling factor: 1\nnumber of clients: 16\n\
                       latency average = 1.404 ms\n\
                       initial connection time = 12.345 ms\n\
                       tps = 11389.414291 (without initial connection time)\n";
        assert_eq!(parse_tps(fifteen), Some(11389.414291));
        let thirteen = "tps = 900.5 (including connections establishing)\n\
                        tps = 1000.25 (excluding connections establishing)\n";
        assert_eq!(parse_tps(thirteen), Some(1000.25));
        assert_eq!(parse_tps("tps = 12.5\n"), Some(12.5));
        assert_eq!(parse_tps("pgbench: error: connection failed\n"), None);
        assert_eq!(
            parse_tps("tps = fast (without initial connection time)\n"),
            None
        );
    }

    #[test]
    fn the_password_leaves_the_url_for_the_environment() {
        assert_eq!(
            without_password("postgresql://app:s%40cret@db:5432/x"),
            Ok(("postgresql://app@db:5432/x".into(), Some("s@cret".into())))
        );
        assert_eq!(
            without_password("postgresql://damascus@%2Ftmp%2Frun:5432/x"),
            Ok(("postgresql://damascus@%2Ftmp%2Frun:5432/x".into(), None))
        );
        assert!(without_password("not a url").is_err());
    }

    fn own(rates: &[(u32, f64)]) -> Vec<ClientRun> {
        rates
            .iter()
            .map(|&(clients, commits_per_second)| ClientRun {
                clients,
                commits_per_second,
                cpu: None,
            })
            .collect()
    }

    #[test]
    fn more_clients_are_tried_while_they_still_pay() {
        // Still rising by 5% or more at the last count: double it, up to the limit.
        assert_eq!(
            further_count(&own(&[(8, 4_000.0), (16, 7_800.0), (32, 9_400.0)]), 100),
            Some(64)
        );
        assert_eq!(
            further_count(&own(&[(8, 4_000.0), (16, 7_800.0), (32, 9_400.0)]), 40),
            Some(40)
        );
        // Flat, falling, or the best was earlier: stop.
        assert_eq!(
            further_count(&own(&[(8, 4_000.0), (16, 9_000.0), (32, 9_200.0)]), 100),
            None
        );
        assert_eq!(
            further_count(&own(&[(8, 4_000.0), (16, 9_000.0), (32, 8_000.0)]), 100),
            None
        );
        assert_eq!(
            further_count(&own(&[(8, 9_000.0), (16, 7_000.0), (32, 8_000.0)]), 100),
            None
        );
        // At the limit, after the most counts, or with fewer than two runs: stop.
        assert_eq!(
            further_count(&own(&[(16, 7_800.0), (32, 9_400.0)]), 32),
            None
        );
        let six = own(&[
            (1, 1.0),
            (2, 2.0),
            (4, 4.0),
            (8, 8.0),
            (16, 16.0),
            (32, 32.0),
        ]);
        assert_eq!(further_count(&six, 1_000), None);
        assert_eq!(further_count(&own(&[(8, 9_000.0)]), 100), None);
    }

    fn pgbench(clients: u32, commits_per_second: f64) -> PgbenchRun {
        PgbenchRun {
            clients,
            threads: 2,
            commits_per_second,
        }
    }

    #[test]
    fn the_baseline_is_the_higher_of_the_two_bests() {
        let lower_client = Baseline {
            own: own(&[(8, 7_344.0), (16, 9_000.0), (32, 8_500.0)]),
            pgbench: Pgbench::Measured(vec![pgbench(8, 10_968.0), pgbench(16, 11_389.0)]),
        };
        assert_eq!(lower_client.own_best().clients, 16);
        assert_eq!(lower_client.commit_rate(), 11_389.0);
        assert_eq!(lower_client.source(), Source::Pgbench);

        let higher_client = Baseline {
            own: own(&[(8, 13_178.0)]),
            pgbench: Pgbench::Measured(vec![pgbench(8, 11_389.0)]),
        };
        assert_eq!(higher_client.commit_rate(), 13_178.0);
        assert_eq!(higher_client.source(), Source::OwnClient);

        for pgbench in [
            Pgbench::NotInstalled,
            Pgbench::Failed {
                reason: "refused".into(),
            },
        ] {
            let alone = Baseline {
                own: own(&[(8, 7_344.0)]),
                pgbench,
            };
            assert_eq!(alone.commit_rate(), 7_344.0);
            assert_eq!(alone.source(), Source::OwnClient);
            assert_eq!(alone.pgbench_best(), None);
        }
    }
}
