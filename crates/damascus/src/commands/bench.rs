//! `damascus bench queue`: turns the flags into the bench's settings, runs it
//! (`damascus-bench`) on the target's server and prints its report.

use std::time::Duration;

use damascus_bench::{report, BenchConfig};
use damascus_db::{Origin, PoolSettings, Target};

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
    println!("{}", report::heading(&config, db.origin.display_url()));
    let report = damascus_bench::run(&server_url, &config).await?;
    print!("{}", report::figures(&report, &config));
    Ok(())
}
