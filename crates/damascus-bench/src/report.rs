//! The text `damascus bench queue` prints: a heading before the run, then every
//! figure of the report. One line per figure, labels in a column, so runs diff well.

use std::fmt::Write;
use std::time::Duration;

use crate::baseline::{Baseline, Pgbench, Source};
use crate::{BenchConfig, BenchReport};

/// The line printed before the run starts; `on` is the server's redacted address.
pub fn heading(config: &BenchConfig, on: &str) -> String {
    format!(
        "damascus bench queue: backlogs {:?}, concurrency {}, payload {} bytes, {} round(s), on {on}",
        config.backlogs, config.concurrency, config.payload_bytes, config.rounds,
    )
}

/// Every figure of `report`, one per line.
pub fn figures(report: &BenchReport, config: &BenchConfig) -> String {
    let mut out = String::new();
    write_figures(&mut out, report, config).expect("writing to a String does not fail");
    out
}

fn write_figures(out: &mut String, report: &BenchReport, config: &BenchConfig) -> std::fmt::Result {
    writeln!(
        out,
        "server            PostgreSQL {}",
        report.server_version
    )?;
    let several = report.rounds.len() > 1;
    if several {
        for (i, round) in report.rounds.iter().enumerate() {
            let backlogs: Vec<String> = round
                .backlogs
                .iter()
                .enumerate()
                .map(|(n, b)| {
                    format!(
                        "{}: {:.0} jobs/s ({:.1}%)",
                        b.jobs,
                        b.jobs_per_second(),
                        100.0 * round.ratio(n)
                    )
                })
                .collect();
            writeln!(
                out,
                "round {:<3}         commit rate {:.0}/s ({}); {}; bare queue {:.0} jobs/s ({:.1}%)",
                i + 1,
                round.commit_rate(),
                source(&round.baseline),
                backlogs.join("; "),
                round.bare_queue.jobs_per_second,
                100.0 * round.bare_queue_ratio()
            )?;
        }
    }
    let medians = if several {
        " (median of the rounds)"
    } else {
        ""
    };
    writeln!(
        out,
        "commit rate       {:.0} single-row commits/s, the higher of this client's best and pgbench's{medians}",
        report.commit_rate(),
    )?;
    let commit_round = report.median_commit_round();
    write_baseline(out, &commit_round.baseline, several)?;
    let bare = report.median_bare_queue_round();
    writeln!(
        out,
        "bare queue        {:.0} jobs/s, {:.1}% of that round's commit rate{} ({} rows drained with one DELETE ... FOR UPDATE SKIP LOCKED each on {} connections: no claim, lease, cap, item or event; for scale)",
        bare.bare_queue.jobs_per_second,
        100.0 * bare.bare_queue_ratio(),
        match bare.bare_queue.cpu_per_job() {
            Some(per_job) => format!(", {:.0} us of machine CPU per job", micros(per_job)),
            None => String::new(),
        },
        bare.bare_queue.jobs,
        config.concurrency,
    )?;
    for n in 0..config.backlogs.len() {
        let (round, backlog) = report.median_backlog(n);
        let spread = if several {
            let ratios: Vec<f64> = report.rounds.iter().map(|r| 100.0 * r.ratio(n)).collect();
            let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ratios.iter().copied().fold(0.0, f64::max);
            format!(" (the round with the median ratio; all rounds {low:.1}-{high:.1}%)")
        } else {
            String::new()
        };
        writeln!(
            out,
            "backlog {:>7}   {:.0} jobs/s ({:.1} s), {:.1}% of the commit rate{spread}; one claim {:.3} ms",
            backlog.jobs,
            backlog.jobs_per_second(),
            backlog.elapsed.as_secs_f64(),
            100.0 * round.ratio(n),
            backlog.claim_cost.as_secs_f64() * 1000.0,
        )?;
        if let (Some(cpu), Some(per_job), Some(ceiling), Some(ratio)) = (
            backlog.cpu,
            backlog.cpu_per_job(),
            backlog.cpu_ceiling(),
            round.ceiling_ratio(n),
        ) {
            writeln!(
                out,
                "  machine CPU     {:.0} us per job (the machine {:.0}% busy over {} cores{}); at that cost, every core busy would run at most {:.0} jobs/s, {:.1}% of the commit rate",
                micros(per_job),
                100.0 * cpu.busy_share,
                cpu.cores,
                own_and_rest(per_job, backlog.own_cpu_per_job(), "the worker pool"),
                ceiling,
                100.0 * ratio,
            )?;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    writeln!(
        out,
        "pickup latency    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples, idle pool, commit acknowledged -> phase start; the enqueuing transaction itself took {:.2} ms at p50)",
        ms(report.latency.p50),
        ms(report.latency.p99),
        ms(report.latency.max),
        report.latency.samples,
        ms(report.latency.enqueue_p50),
    )
}

/// Both measurements of a baseline, each client count's rate, and what a commit cost
/// the machine on this client's best run.
fn write_baseline(out: &mut String, baseline: &Baseline, several: bool) -> std::fmt::Result {
    let round = if several {
        " (the round with the median commit rate)"
    } else {
        ""
    };
    let best = baseline.own_best();
    let tries: Vec<String> = baseline
        .own
        .iter()
        .map(|r| format!("{}: {:.0}/s", r.clients, r.commits_per_second))
        .collect();
    writeln!(
        out,
        "  this client     {:.0}/s at its best, on {} connections{round} (connections: {})",
        best.commits_per_second,
        best.clients,
        tries.join(", "),
    )?;
    match &baseline.pgbench {
        Pgbench::Measured(runs) => {
            let best = baseline
                .pgbench_best()
                .expect("a measured pgbench has at least one run");
            let tries: Vec<String> = runs
                .iter()
                .map(|r| format!("{}: {:.0}/s", r.clients, r.commits_per_second))
                .collect();
            writeln!(
                out,
                "  pgbench         {:.0}/s at its best, {} clients on {} threads{round} (clients: {})",
                best.commits_per_second,
                best.clients,
                best.threads,
                tries.join(", "),
            )?;
        }
        Pgbench::NotInstalled => writeln!(
            out,
            "  pgbench         not installed (looked on PATH and in /usr/lib/postgresql/*/bin): the baseline is this client's alone"
        )?,
        Pgbench::Failed { reason } => writeln!(
            out,
            "  pgbench         failed, so the baseline is this client's alone: {reason}"
        )?,
    }
    if let (Some(cpu), Some(per_commit)) = (best.cpu, baseline.cpu_per_commit()) {
        writeln!(
            out,
            "  machine CPU     {:.0} us per commit (the machine {:.0}% busy over {} cores{}) on this client's best run",
            micros(per_commit),
            100.0 * cpu.busy_share,
            cpu.cores,
            own_and_rest(per_commit, baseline.own_cpu_per_commit(), "the client")
        )?;
    }
    Ok(())
}

fn source(baseline: &Baseline) -> &'static str {
    match baseline.source() {
        Source::OwnClient => "this client",
        Source::Pgbench => "pgbench",
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000_000.0
}

/// A machine cost split into this process's part (`what`: the worker pool, or the
/// commit loop's client) and the rest of the machine's (mostly the server).
fn own_and_rest(total: Duration, own: Option<Duration>, what: &str) -> String {
    let Some(own) = own else {
        return String::new();
    };
    format!(
        "; {what} in this process {:.0} us, the rest of the machine (mostly the server) {:.0} us",
        micros(own),
        micros(total.saturating_sub(own))
    )
}
