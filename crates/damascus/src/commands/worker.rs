//! `damascus worker` and `damascus cycle`: the worker pool with the three loops.

use std::path::Path;
use std::sync::Arc;

use damascus_db::Target;
use damascus_loops::Loops;
use damascus_queue::{run_until_idle, WorkerPool};

use crate::cli::{CycleArgs, WorkerArgs};
use crate::commands::{open_migrated_with, worker_pool_settings};
use crate::settings;

pub async fn worker(target: &Target, data_dir: &Path, args: WorkerArgs) -> anyhow::Result<()> {
    let loops = Loops::new(settings::loops_config(&args.loops, data_dir)?)?;
    let config = settings::queue_config(&args.queue);
    let db = open_migrated_with(target, worker_pool_settings(config.concurrency, 0)).await?;
    let pool = WorkerPool::start(db.pool.clone(), config.clone(), Arc::new(loops)).await?;
    eprintln!(
        "worker {} running with a global cap of {} phases on {}; stop with Ctrl-C or SIGTERM",
        pool.worker_id().0,
        pool.concurrency(),
        db.origin.display_url()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!(
        "stopping: no new claims; running phases have {} s to finish",
        config.shutdown_grace.as_secs()
    );
    let summary = pool.shutdown().await;
    println!("{summary}");
    Ok(())
}

pub async fn cycle(target: &Target, data_dir: &Path, args: CycleArgs) -> anyhow::Result<()> {
    let loops = Loops::new(settings::loops_config(&args.loops, data_dir)?)?;
    let config = settings::queue_config(&args.queue);
    let db = open_migrated_with(target, worker_pool_settings(config.concurrency, 0)).await?;
    let summary = run_until_idle(db.pool.clone(), config, Arc::new(loops)).await?;
    println!("{summary}");
    Ok(())
}
