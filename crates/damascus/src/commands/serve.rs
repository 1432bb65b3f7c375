//! `damascus serve` (the API and UI) and `damascus run` (migrations, worker pool, API
//! and UI in one process: the container's entry point).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use damascus_api::{ApiConfig, AppState};
use damascus_db::{migrate, Target};
use damascus_loops::Loops;
use damascus_queue::WorkerPool;
use tokio_util::sync::CancellationToken;

use crate::cli::{RunArgs, ServeArgs};
use crate::commands::open_migrated;
use crate::settings;

fn api_config(args: &ServeArgs) -> ApiConfig {
    ApiConfig {
        public_health: !args.private_health,
        public_metrics: args.public_metrics,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
fn stop_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let fired = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        fired.cancel();
    });
    Ok(token)
}

async fn bind(args: &ServeArgs) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; choose another address with --listen",
                args.listen
            )
        })
}

pub async fn serve(target: &Target, data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let listener = bind(&args).await?;
    eprintln!(
        "serving the API and web UI on http://{}",
        listener.local_addr()?
    );
    let stop = stop_signal()?;
    let state = AppState {
        pool: db.pool.clone(),
        config: api_config(&args),
        logs_dir: Some(data_dir.join("logs")),
    };
    damascus_api::serve(listener, state, async move { stop.cancelled().await }).await?;
    Ok(())
}

pub async fn run(target: &Target, data_dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    crate::commands::config::validate_webhooks(&args.webhooks)?;
    let webhooks: Vec<String> = args
        .webhooks
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    let loops = Loops::new(settings::loops_config(&args.loops, data_dir)?)?;
    let queue = settings::queue_config(&args.queue);
    // Beside the workers: the API's requests and event streams, the relay, retention.
    let pool_settings = crate::commands::worker_pool_settings(queue.concurrency, 10);
    let db = damascus_db::open(target, pool_settings).await?;
    if args.no_migrate {
        migrate::require_current(&db.pool).await?;
    } else {
        let applied = migrate::apply(&db.pool).await?;
        if applied > 0 {
            eprintln!("applied {applied} migrations");
        }
    }
    // Webhooks given in the environment are registered once, like `damascus webhook add`.
    for url in &webhooks {
        let name = crate::commands::webhook::env_name(url);
        let secret = damascus_relay::signature::new_secret();
        if damascus_db::webhooks::ensure_url(&db.pool, &name, url, &secret).await? {
            eprintln!(
                "registered webhook {name} ({}) from DAMASCUS_WEBHOOKS; its signing secret: damascus webhook show {name}",
                damascus_relay::host_of(url)
            );
        }
    }
    let listener = bind(&args.serve).await?;
    let stop = stop_signal()?;
    let workers = WorkerPool::start(db.pool.clone(), queue, Arc::new(loops)).await?;
    eprintln!(
        "damascus running: worker {} (global cap {}), API and web UI on http://{}, database {}",
        workers.worker_id().0,
        workers.concurrency(),
        listener.local_addr()?,
        db.origin.display_url()
    );
    let state = AppState {
        pool: db.pool.clone(),
        config: api_config(&args.serve),
        logs_dir: Some(data_dir.join("logs")),
    };
    let api_stop = stop.clone();
    let api = tokio::spawn(damascus_api::serve(listener, state, async move {
        api_stop.cancelled().await
    }));
    let relay = damascus_relay::WebhookRelay::start(
        db.pool.clone(),
        damascus_relay::RelayConfig::default(),
    );
    let retention = damascus_relay::Retention::start(
        db.pool.clone(),
        damascus_relay::RetentionConfig {
            age: std::time::Duration::from_secs(u64::from(args.retention_days) * 86_400),
            interval: std::time::Duration::from_secs(3600),
            logs_dir: data_dir.join("logs"),
        },
    );
    stop.cancelled().await;
    eprintln!("stopping: no new claims; running phases get their grace period");
    let summary = workers.shutdown().await;
    relay.stop().await;
    retention.stop().await;
    api.await??;
    println!("{summary}");
    Ok(())
}
