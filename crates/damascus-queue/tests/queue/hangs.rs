//! A worker whose database stops answering: the keep-alive gives up in time and the
//! running phase stops before its lease ends, so no job runs twice at once; a
//! connection that hangs in a statement or idles inside a transaction is cut off by
//! the server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use damascus_core::Verdict;
use damascus_queue::{JobContext, PhaseFuture, PhaseRunner, WorkerPool};

use crate::support::{database, fast_config, items};

/// A phase that runs until it is stopped, and records when it was.
struct UntilStopped {
    started: Arc<tokio::sync::Notify>,
    stopped_at: Arc<Mutex<Option<Instant>>>,
}

struct RecordDrop(Arc<Mutex<Option<Instant>>>);

impl Drop for RecordDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

impl PhaseRunner for UntilStopped {
    fn run(&self, _job: JobContext) -> PhaseFuture {
        let guard = RecordDrop(self.stopped_at.clone());
        let started = self.started.clone();
        Box::pin(async move {
            let _guard = guard;
            started.notify_one();
            std::future::pending::<()>().await;
            Verdict::pass().into()
        })
    }
}

#[tokio::test]
async fn a_keep_alive_that_cannot_reach_the_database_stops_the_phase_before_its_lease_ends() {
    let db = database().await;
    items(&db.pool, 1, 3, 10).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let stopped_at = Arc::new(Mutex::new(None));
    let config = fast_config(1);
    let workers = WorkerPool::start(
        db.pool.clone(),
        config.clone(),
        Arc::new(UntilStopped {
            started: started.clone(),
            stopped_at: stopped_at.clone(),
        }),
    )
    .await
    .unwrap();
    started.notified().await;
    // Another session takes the worker's row: its heartbeat, and with it every
    // keep-alive, waits for a lock that is never released.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from damascus_worker_processes for update")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let lease_left: f64 = sqlx::query_scalar(
        "select extract(epoch from max(lease_until) - clock_timestamp())::float8 from damascus_slots where claim_token is not null",
    )
    .fetch_one(&mut *blocker)
    .await
    .unwrap();
    let blocked_at = Instant::now();
    let lease_ends = blocked_at + Duration::from_secs_f64(lease_left.max(0.0));
    let stopped = loop {
        if let Some(at) = *stopped_at.lock().unwrap() {
            break at;
        }
        assert!(
            blocked_at.elapsed() < config.lease * 3,
            "the phase still runs {:?} after its keep-alives hung",
            blocked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        stopped < lease_ends,
        "the phase stopped {:?} after its lease ended",
        stopped - lease_ends
    );
    blocker.rollback().await.unwrap();
    workers.shutdown().await;
}

#[tokio::test]
async fn the_server_cuts_off_a_hung_statement_and_an_idle_transaction() {
    let db = database().await;
    let settings = damascus_db::connect::PoolSettings {
        max_connections: 2,
        statement_timeout: Duration::from_millis(300),
        idle_in_transaction_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let pool = damascus_db::connect::pool_options(settings)
        .connect(&db.url)
        .await
        .unwrap();
    let started = Instant::now();
    let hung = sqlx::query("select pg_sleep(30)").execute(&pool).await;
    let code = hung
        .unwrap_err()
        .as_database_error()
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("select 1").execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after_idle = sqlx::query("select 1").execute(&mut *tx).await;
    assert!(
        after_idle.is_err(),
        "a transaction left idle past the timeout still answers"
    );
}
