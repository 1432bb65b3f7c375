//! The queue bench's run: end-to-end throughput of no-op phases through the real pool
//! (claim, run, finish transaction, trigger), pickup latency on an idle pool, the cost
//! of one claim at each backlog, and, against the same server in
//! the same run, the single-row commit rate that a queue's throughput is compared with
//! (`baseline`) and a bare `SKIP LOCKED` queue for scale; for each part, what it cost
//! the machine's CPU (`machine_cpu`).
//!
//! A run can have several rounds, each of every backlog followed by the commit-rate
//! baseline and the bare queue, so each round's ratio compares figures measured close
//! together, and the median of the rounds says more than one run on a machine whose
//! speed drifts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use damascus_core::Verdict;
use damascus_db::{jobs, DbResult};
use damascus_queue::{JobContext, PhaseFuture, PhaseRunner, QueueConfig, WorkerPool};
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};

use crate::baseline::{self, Baseline};
use crate::machine_cpu::{CpuMeter, CpuUse};
use crate::statements as bench;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Backlog sizes to measure, one fresh database each.
    pub backlogs: Vec<u64>,
    pub concurrency: u32,
    pub payload_bytes: usize,
    pub latency_samples: u32,
    /// How long each client count of the commit-rate baseline runs.
    pub commit_duration: Duration,
    /// How many times to measure every backlog and the commit rate (at least one).
    pub rounds: u32,
}

#[derive(Debug, Clone)]
pub struct BacklogResult {
    pub jobs: u64,
    pub elapsed: Duration,
    pub claim_cost: Duration,
    /// The machine's CPU use from pool start to the last verdict.
    pub cpu: Option<CpuUse>,
}

impl BacklogResult {
    pub fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }

    /// The machine's CPU time per job (server, worker and bench together).
    pub fn cpu_per_job(&self) -> Option<Duration> {
        Some(self.cpu?.per_operation(self.jobs as f64))
    }

    /// This process's part of it: the worker pool and the no-op phases.
    pub fn own_cpu_per_job(&self) -> Option<Duration> {
        self.cpu?.own_per_operation(self.jobs as f64)
    }

    /// Jobs/s the machine could run at this CPU cost per job with every core busy.
    pub fn cpu_ceiling(&self) -> Option<f64> {
        Some(self.cpu?.ceiling(self.jobs as f64))
    }
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub samples: usize,
    /// The median time of the enqueuing transaction itself (insert, spawn trigger,
    /// commit), which comes before the pickup.
    pub enqueue_p50: Duration,
}

/// A no-op phase that reads its item (as every real phase does), counts, and passes.
struct NoopPhase {
    done: AtomicU64,
    target: AtomicU64,
    all_done: Notify,
    started: Option<mpsc::UnboundedSender<Instant>>,
}

/// The pool's handle on a shared `NoopPhase` (the bench keeps another, to wait on it).
struct NoopRunner(Arc<NoopPhase>);

impl PhaseRunner for NoopRunner {
    fn run(&self, job: JobContext) -> PhaseFuture {
        let phase = self.0.clone();
        Box::pin(async move {
            if let Some(started) = &phase.started {
                let _ = started.send(Instant::now());
            }
            if let Err(e) = bench::read_item_body_len(&job.pool, job.item_id).await {
                return Verdict::TransientError {
                    reason: e.to_string(),
                }
                .into();
            }
            if phase.done.fetch_add(1, Ordering::SeqCst) + 1 == phase.target.load(Ordering::SeqCst)
            {
                phase.all_done.notify_one();
            }
            Verdict::pass().into()
        })
    }
}

fn pool_config(concurrency: u32) -> QueueConfig {
    QueueConfig {
        concurrency: Some(concurrency),
        ..QueueConfig::default()
    }
}

/// Runs `jobs` queued no-op jobs in `pool`'s (scratch) database to completion.
pub async fn throughput(pool: &PgPool, jobs: u64, config: &BenchConfig) -> DbResult<BacklogResult> {
    bench::seed_review_items(pool, jobs, config.payload_bytes).await?;
    let info = jobs::WorkerInfo {
        host: "bench-probe".into(),
        pid: std::process::id(),
        lease: std::time::Duration::from_secs(30),
    };
    let probe = jobs::register_worker(pool, &info, Some(config.concurrency))
        .await?
        .id;
    let claim_cost = bench::claim_cost(pool, probe, 50).await?;
    jobs::deregister_worker(pool, probe).await?;

    let phase = Arc::new(NoopPhase {
        done: AtomicU64::new(0),
        target: AtomicU64::new(jobs),
        all_done: Notify::new(),
        started: None,
    });
    let meter = CpuMeter::start();
    let started = Instant::now();
    let workers = WorkerPool::start(
        pool.clone(),
        pool_config(config.concurrency),
        Arc::new(NoopRunner(phase.clone())),
    )
    .await?;
    phase.all_done.notified().await;
    // Shutdown waits for the last verdicts to commit.
    let summary = workers.shutdown().await;
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    debug_assert_eq!(summary.advanced(), jobs);
    Ok(BacklogResult {
        jobs,
        elapsed,
        claim_cost,
        cpu,
    })
}

/// Pickup latency on an idle pool: the acknowledged commit of a transaction that makes
/// one item runnable → its phase starting, one item at a time. (The worker hears the
/// NOTIFY at the commit, the client its acknowledgement one network hop later, so this
/// undercounts by at most that hop: a local socket's few microseconds.)
pub async fn pickup_latency(pool: &PgPool, config: &BenchConfig) -> DbResult<Latency> {
    let (sender, mut starts) = mpsc::unbounded_channel();
    let phase = Arc::new(NoopPhase {
        done: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        all_done: Notify::new(),
        started: Some(sender),
    });
    let mut queue = pool_config(config.concurrency);
    // Only NOTIFY may wake the pool for this measurement.
    queue.poll_interval = Duration::from_secs(60);
    let workers =
        WorkerPool::start(pool.clone(), queue, Arc::new(NoopRunner(phase.clone()))).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples = Vec::with_capacity(config.latency_samples as usize);
    let mut enqueues = Vec::with_capacity(config.latency_samples as usize);
    for _ in 0..config.latency_samples {
        let enqueue = Instant::now();
        bench::seed_one_review_item(pool).await?;
        // The enqueuing transaction's commit is acknowledged now; its own work (the
        // insert, the spawn trigger) is not part of the pickup.
        let committed = Instant::now();
        enqueues.push(committed - enqueue);
        let Some(started) = tokio::time::timeout(Duration::from_secs(10), starts.recv())
            .await
            .ok()
            .flatten()
        else {
            break;
        };
        samples.push(started.saturating_duration_since(committed));
        // Let the pool finish and fall idle again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.shutdown().await;
    samples.sort();
    enqueues.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
        samples: samples.len(),
        enqueue_p50: enqueues
            .get(enqueues.len() / 2)
            .copied()
            .unwrap_or_default(),
    })
}

/// One round: every backlog, then the commit-rate baseline right after them.
#[derive(Debug, Clone)]
pub struct Round {
    pub backlogs: Vec<BacklogResult>,
    pub baseline: Baseline,
    /// A bare queue on the same server right after, for scale.
    pub bare_queue: BareQueue,
}

/// A bare `SKIP LOCKED` queue (one delete per job, nothing else) drained with the same
/// connections, the largest backlog's number of jobs and the same payload: what a
/// queue row alone costs on this server, next to a Damascus job.
#[derive(Debug, Clone)]
pub struct BareQueue {
    pub jobs: u64,
    pub jobs_per_second: f64,
    pub cpu: Option<CpuUse>,
}

impl BareQueue {
    pub fn cpu_per_job(&self) -> Option<Duration> {
        Some(self.cpu?.per_operation(self.jobs as f64))
    }
}

impl Round {
    /// This round's baseline: the best single-row commit rate of its own client and of
    /// pgbench, whichever is higher.
    pub fn commit_rate(&self) -> f64 {
        self.baseline.commit_rate()
    }

    /// Backlog `n`'s jobs/s over this round's commit rate.
    pub fn ratio(&self, n: usize) -> f64 {
        self.backlogs[n].jobs_per_second() / self.commit_rate()
    }

    /// The bare queue's jobs/s over this round's commit rate.
    pub fn bare_queue_ratio(&self) -> f64 {
        self.bare_queue.jobs_per_second / self.commit_rate()
    }

    /// Backlog `n`'s CPU ceiling (jobs/s with every core busy at its CPU cost per job)
    /// over this round's commit rate: the most this machine could reach at that cost.
    pub fn ceiling_ratio(&self, n: usize) -> Option<f64> {
        Some(self.backlogs[n].cpu_ceiling()? / self.commit_rate())
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub server_version: String,
    pub rounds: Vec<Round>,
    pub latency: Latency,
}

impl BenchReport {
    /// The median of the rounds' commit rates.
    pub fn commit_rate(&self) -> f64 {
        median(self.rounds.iter().map(Round::commit_rate).collect())
    }

    /// The round whose commit rate is the median (the upper one of an even count).
    pub fn median_commit_round(&self) -> &Round {
        self.median_round_by(Round::commit_rate)
    }

    /// The round whose bare queue's ratio is the median (the upper one of an even count).
    pub fn median_bare_queue_round(&self) -> &Round {
        self.median_round_by(Round::bare_queue_ratio)
    }

    /// Backlog `n` in the round with the median ratio (the upper one of an even count).
    pub fn median_backlog(&self, n: usize) -> (&Round, &BacklogResult) {
        let round = self.median_round_by(|r| r.ratio(n));
        (round, &round.backlogs[n])
    }

    /// The round in the middle when ordered by `key` (the upper one of an even count).
    fn median_round_by(&self, key: impl Fn(&Round) -> f64) -> &Round {
        let mut order: Vec<&Round> = self.rounds.iter().collect();
        order.sort_by(|a, b| key(a).total_cmp(&key(b)));
        order[order.len() / 2]
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Runs the whole bench on the server at `server_url`, each part in a scratch database
/// that is dropped afterwards.
pub async fn run(server_url: &str, config: &BenchConfig) -> DbResult<BenchReport> {
    let (counts, limit) = baseline_client_counts(server_url, config).await?;
    let mut rounds = Vec::new();
    for round in 0..config.rounds.max(1) {
        let mut backlogs = Vec::new();
        for (n, &jobs) in config.backlogs.iter().enumerate() {
            let label = format!("throughput_{round}_{n}");
            let result = with_scratch_database(server_url, &label, config, |pool| {
                let config = config.clone();
                async move { throughput(&pool, jobs, &config).await }
            })
            .await?;
            backlogs.push(result);
        }
        let label = format!("commit_{round}");
        let baseline = with_scratch_database_sized(server_url, &label, limit + 1, |pool, url| {
            let counts = counts.clone();
            let duration = config.commit_duration;
            async move { baseline::measure(&pool, &url, &counts, limit, duration).await }
        })
        .await?;
        let label = format!("bare_queue_{round}");
        let bare_jobs = config.backlogs.iter().copied().max().unwrap_or(1);
        let bare_queue = with_scratch_database(server_url, &label, config, |pool| {
            let config = config.clone();
            async move {
                bench::seed_bare_queue(&pool, bare_jobs, config.payload_bytes).await?;
                let meter = CpuMeter::start();
                let rate = bench::drain_bare_queue(&pool, config.concurrency).await?;
                Ok(BareQueue {
                    jobs: bare_jobs,
                    jobs_per_second: rate,
                    cpu: meter.stop(),
                })
            }
        })
        .await?;
        rounds.push(Round {
            backlogs,
            baseline,
            bare_queue,
        });
    }
    let (server_version, latency) = with_scratch_database(server_url, "latency", config, |pool| {
        let config = config.clone();
        async move {
            bench::seed_review_items(&pool, 0, 0).await?;
            let latency = pickup_latency(&pool, &config).await?;
            Ok((bench::server_version(&pool).await?, latency))
        }
    })
    .await?;
    Ok(BenchReport {
        server_version,
        rounds,
        latency,
    })
}

/// The baseline's first client counts (`baseline::client_counts`) and the most it may
/// open: half the connections the server has left, since the pool's idle sessions
/// stay open while pgbench runs.
async fn baseline_client_counts(
    server_url: &str,
    config: &BenchConfig,
) -> DbResult<(Vec<u32>, u32)> {
    let pool = damascus_db::connect::pool_options(damascus_db::PoolSettings {
        max_connections: 1,
        ..damascus_db::PoolSettings::default()
    })
    .connect(server_url)
    .await?;
    let headroom = bench::connection_headroom(&pool).await;
    pool.close().await;
    let limit = (headroom?.saturating_sub(2) / 2).max(1);
    Ok((baseline::client_counts(config.concurrency, limit), limit))
}

/// A migrated scratch database with the bench's tables and a pool of the bench's
/// concurrency (and a few more connections for the bench's own statements).
async fn with_scratch_database<T, F, Fut>(
    server_url: &str,
    label: &str,
    config: &BenchConfig,
    body: F,
) -> DbResult<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = DbResult<T>>,
{
    with_scratch_database_sized(server_url, label, config.concurrency + 4, |pool, _url| {
        body(pool)
    })
    .await
}

/// A scratch database `damascus_bench_<pid>_<label>`, migrated, with the bench's tables
/// and a pool of `max_connections`; `body` gets the pool and the database's URL, and
/// the database is dropped after it, whatever it returned.
async fn with_scratch_database_sized<T, F, Fut>(
    server_url: &str,
    label: &str,
    max_connections: u32,
    body: F,
) -> DbResult<T>
where
    F: FnOnce(PgPool, String) -> Fut,
    Fut: std::future::Future<Output = DbResult<T>>,
{
    use damascus_db::connect;
    let name = format!("damascus_bench_{}_{label}", std::process::id());
    connect::create_database_if_missing(server_url, &name).await?;
    let url = connect::url_for_database(server_url, &name)?;
    // Seeding 50,000 rows is slow on purpose; sqlx's slow-statement warnings are noise here.
    use sqlx::ConnectOptions;
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)?
        .log_slow_statements(tracing::log::LevelFilter::Off, std::time::Duration::ZERO);
    let pool = connect::pool_options(connect::PoolSettings {
        max_connections,
        ..connect::PoolSettings::default()
    })
    .connect_with(options)
    .await?;
    let result = async {
        damascus_db::migrate::apply(&pool).await?;
        bench::create_tables(&pool).await?;
        body(pool.clone(), url.clone()).await
    }
    .await;
    pool.close().await;
    connect::drop_database(server_url, &name).await?;
    result
}
