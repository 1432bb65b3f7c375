//! The body of a child worker process (see `support::WorkerProcess`). Run by the
//! harness as an ordinary test, it has nothing to do and returns at once.

use std::time::Duration;

use damascus_queue::WorkerPool;
use sqlx::postgres::PgPoolOptions;

use crate::support::{fast_config, runner, Script};

#[test]
fn entry() {
    if std::env::var_os("QUEUE_TEST_WORKER").is_none() {
        return;
    }
    let env =
        |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"));
    let millis = |name: &str| Duration::from_millis(env(name).parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .connect(&env("QUEUE_TEST_DATABASE_URL"))
            .await
            .unwrap();
        let mut config = fast_config(env("QUEUE_TEST_CONCURRENCY").parse().unwrap());
        config.lease = millis("QUEUE_TEST_LEASE_MS");
        let script = Script::parse(&env("QUEUE_TEST_SCRIPT"));
        let workers = WorkerPool::start(pool, config, runner(script, millis("QUEUE_TEST_WORK_MS")))
            .await
            .unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        workers.shutdown().await;
    });
}
