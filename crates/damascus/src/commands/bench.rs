//! `damascus bench queue`: runs the queue bench and prints its figures.

use std::time::Duration;

use damascus_db::{Origin, PoolSettings, Target};
use damascus_queue::bench::{self, BenchConfig};

use crate::cli::BenchQueueArgs;

pub async fn queue(target: &Target, args: BenchQueueArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are only meaningful from: cargo run --release -- bench queue");
    }
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    let server_url = match (&db.origin, target) {
        (Origin::Embedded { url, .. }, _) => url.clone(),
        (Origin::Url { .. }, Target::Url(raw)) => raw.clone(),
        (Origin::Url { .. }, Target::Embedded { .. }) => {
            unreachable!("an embedded target opens an embedded origin")
        }
    };
    db.pool.close().await;
    let config = BenchConfig {
        backlogs: args.jobs.clone(),
        concurrency: args.concurrency,
        payload_bytes: args.payload_bytes as usize,
        latency_samples: args.latency_samples,
        commit_duration: Duration::from_secs(u64::from(args.commit_seconds)),
        rounds: args.rounds,
    };
    println!(
        "damascus bench queue: backlogs {:?}, concurrency {}, payload {} bytes, {} round(s), on {}",
        config.backlogs,
        config.concurrency,
        config.payload_bytes,
        config.rounds,
        db.origin.display_url()
    );
    let report = bench::run(&server_url, &config).await?;
    println!("server            PostgreSQL {}", report.server_version);
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
            println!(
                "round {:<3}         commit rate {:.0}/s; {}; bare queue {:.0} jobs/s ({:.1}%)",
                i + 1,
                round.commit_rate,
                backlogs.join("; "),
                round.bare_queue.jobs_per_second,
                100.0 * round.bare_queue_ratio()
            );
        }
    }
    let medians = if several {
        " (median of the rounds)"
    } else {
        ""
    };
    println!(
        "commit rate       {:.0} single-row commits/s on {} connections{medians}",
        report.commit_rate(),
        config.concurrency
    );
    let commit_round = report.median_commit_round();
    if let (Some(cpu), Some(per_commit)) = (commit_round.commit_cpu, commit_round.cpu_per_commit())
    {
        println!(
            "  machine CPU     {:.0} us per commit (the machine {:.0}% busy over {} cores{})",
            micros(per_commit),
            100.0 * cpu.busy_share,
            cpu.cores,
            own_and_rest(per_commit, commit_round.own_cpu_per_commit(), "the client")
        );
    }
    let bare = report.median_bare_queue_round();
    println!(
        "bare queue        {:.0} jobs/s, {:.1}% of that round's commit rate{} ({} rows drained with one DELETE ... FOR UPDATE SKIP LOCKED each: no claim, lease, cap, item or event; for scale)",
        bare.bare_queue.jobs_per_second,
        100.0 * bare.bare_queue_ratio(),
        match bare.bare_queue.cpu_per_job() {
            Some(per_job) => format!(", {:.0} us of machine CPU per job", micros(per_job)),
            None => String::new(),
        },
        bare.bare_queue.jobs,
    );
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
        println!(
            "backlog {:>7}   {:.0} jobs/s ({:.1} s), {:.1}% of the commit rate{spread}; one claim {:.3} ms, one mq_poll {:.3} ms",
            backlog.jobs,
            backlog.jobs_per_second(),
            backlog.elapsed.as_secs_f64(),
            100.0 * round.ratio(n),
            backlog.claim_cost.as_secs_f64() * 1000.0,
            backlog.poll_cost.as_secs_f64() * 1000.0,
        );
        if let (Some(cpu), Some(per_job), Some(ceiling), Some(ratio)) = (
            backlog.cpu,
            backlog.cpu_per_job(),
            backlog.cpu_ceiling(),
            round.ceiling_ratio(n),
        ) {
            println!(
                "  machine CPU     {:.0} us per job (the machine {:.0}% busy over {} cores{}); at that cost, every core busy would run at most {:.0} jobs/s, {:.1}% of the commit rate",
                micros(per_job),
                100.0 * cpu.busy_share,
                cpu.cores,
                own_and_rest(per_job, backlog.own_cpu_per_job(), "the worker pool"),
                ceiling,
                100.0 * ratio,
            );
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "pickup latency    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples, idle pool, commit acknowledged -> phase start; the enqueuing transaction itself took {:.2} ms at p50)",
        ms(report.latency.p50),
        ms(report.latency.p99),
        ms(report.latency.max),
        report.latency.samples,
        ms(report.latency.enqueue_p50),
    );
    Ok(())
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
