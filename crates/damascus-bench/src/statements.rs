//! The statements `damascus bench queue` times: seeding jobs, one claim in a
//! rolled-back transaction, the single-row insert that gives the server's commit
//! rate, and a bare queue's seed and delete. They run in a scratch database, never in
//! the product's; the tables they use beside the product's schema are in
//! `sql/tables.sql`.

use std::time::{Duration, Instant};

use damascus_db::jobs::WorkerId;
use damascus_db::DbResult;
use sqlx::PgPool;

/// The bench's own tables (`sql/tables.sql`), made in a migrated scratch database.
pub async fn create_tables(pool: &PgPool) -> DbResult<()> {
    sqlx::raw_sql(include_str!("../sql/tables.sql"))
        .execute(pool)
        .await?;
    Ok(())
}

/// Connections the server can still open for this bench: `max_connections` less the
/// superuser's reserve and the sessions open now.
pub async fn connection_headroom(pool: &PgPool) -> DbResult<u32> {
    let headroom: i64 = sqlx::query_scalar(
        "select current_setting('max_connections')::int8
              - current_setting('superuser_reserved_connections')::int8
              - (select count(*) from pg_stat_activity where backend_type = 'client backend')",
    )
    .fetch_one(pool)
    .await?;
    Ok(u32::try_from(headroom.max(0)).unwrap_or(u32::MAX))
}

/// Inserts `n` items in phase review with a body of `body_bytes`, each in a project
/// (and repository) of its own, so that each heads its own merge queue; the spawn
/// trigger gives each a job: `n` ready no-op jobs. (Items of one repository would run
/// one at a time, in their queue's order.) Also makes the project `bench` for
/// `seed_one_review_item`.
pub async fn seed_review_items(pool: &PgPool, n: u64, body_bytes: usize) -> DbResult<()> {
    sqlx::query("insert into projects (name, repository) values ('bench', '/dev/null') on conflict (name) do nothing")
        .execute(pool)
        .await?;
    // In batches, so that a large backlog does not become one huge transaction.
    let mut done = 0i64;
    while done < n as i64 {
        let batch = (n as i64 - done).min(10_000);
        sqlx::query(
            "with p as (
                insert into projects (name, repository)
                select 'bench-' || g, '/dev/null/bench-' || g from generate_series($3 + 1, $3 + $1) g
                returning id, name)
             insert into work_items (project_id, title, body, phase, max_attempts_per_phase, max_attempts_total, source)
             select p.id, p.name, repeat('x', $2), 'review', 3, 10, 'bench' from p",
        )
        .bind(batch)
        .bind(body_bytes as i32)
        .bind(done)
        .execute(pool)
        .await?;
        done += batch;
    }
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

/// One item made runnable in its own transaction (for pickup latency). Uses
/// `seed_review_items`'s project `bench`, which must exist; the probes run one at a
/// time, so each finds the project's merge queue empty.
pub async fn seed_one_review_item(pool: &PgPool) -> DbResult<()> {
    sqlx::query(
        "insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total, source)
         select id, 'latency probe', 'review', 3, 10, 'bench' from projects where name = 'bench'",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What a phase of the bench reads: its item's body.
pub async fn read_item_body_len(pool: &PgPool, item_id: i64) -> DbResult<i32> {
    Ok(
        sqlx::query_scalar("select length(body) from work_items where id = $1")
            .bind(item_id)
            .fetch_one(pool)
            .await?,
    )
}

/// Mean time of `damascus_claim` for one job, each in a transaction that is rolled
/// back so the queue is left as it was.
pub async fn claim_cost(pool: &PgPool, worker: WorkerId, samples: u32) -> DbResult<Duration> {
    let mut conn = pool.acquire().await?;
    mean_rolled_back(
        &mut conn,
        "select * from damascus_claim($1, 1, interval '30 seconds')",
        worker,
        samples,
    )
    .await
}

async fn mean_rolled_back(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    worker: WorkerId,
    samples: u32,
) -> DbResult<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..samples {
        sqlx::query("begin").execute(&mut *conn).await?;
        let start = Instant::now();
        sqlx::query(sql).bind(worker.0).execute(&mut *conn).await?;
        total += start.elapsed();
        sqlx::query("rollback").execute(&mut *conn).await?;
    }
    Ok(total / samples.max(1))
}

/// Commits single-row inserts into `bench_commits` on `connections` connections (the
/// pool must allow that many) for `duration`; returns commits per second. One client
/// count of the baseline a queue is compared with: each job needs at least one commit.
pub async fn single_row_commit_rate(
    pool: &PgPool,
    connections: u32,
    duration: Duration,
) -> DbResult<f64> {
    // Every connection is open before the clock starts, as pgbench reports its rate
    // without the connections' start-up.
    let mut conns = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        conns.push(pool.acquire().await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        tasks.spawn(async move {
            let mut commits = 0u64;
            while Instant::now() < deadline {
                sqlx::query("insert into bench_commits (payload) values ($1)")
                    .bind("x")
                    .execute(&mut *conn)
                    .await?;
                commits += 1;
            }
            DbResult::Ok(commits)
        });
    }
    let mut commits = 0;
    while let Some(done) = tasks.join_next().await {
        commits += done.expect("commit task does not panic")?;
    }
    Ok(commits as f64 / started.elapsed().as_secs_f64())
}

/// A bare queue, for scale: `jobs` rows with a payload of `payload_bytes`, for
/// `drain_bare_queue`.
pub async fn seed_bare_queue(pool: &PgPool, jobs: u64, payload_bytes: usize) -> DbResult<()> {
    sqlx::query(
        "insert into bench_bare_queue (payload) select repeat('x', $2) from generate_series(1, $1)",
    )
    .bind(jobs as i64)
    .bind(payload_bytes as i32)
    .execute(pool)
    .await?;
    sqlx::query("analyze bench_bare_queue")
        .execute(pool)
        .await?;
    Ok(())
}

/// Drains the bare queue with `connections` connections, one `DELETE … FOR UPDATE SKIP
/// LOCKED` per job in autocommit: no claim, no lease, no cap, no item, no event.
/// Returns jobs per second from the first delete to the last.
pub async fn drain_bare_queue(pool: &PgPool, connections: u32) -> DbResult<f64> {
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..connections {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut taken = 0u64;
            while sqlx::query_scalar::<_, i32>(
                "delete from bench_bare_queue
                 where id = (select id from bench_bare_queue order by id limit 1 for update skip locked)
                 returning length(payload)",
            )
            .fetch_optional(&mut *conn)
            .await?
            .is_some()
            {
                taken += 1;
            }
            DbResult::Ok(taken)
        });
    }
    let mut taken = 0;
    while let Some(done) = tasks.join_next().await {
        taken += done.expect("bare queue task does not panic")?;
    }
    Ok(taken as f64 / started.elapsed().as_secs_f64())
}

pub async fn server_version(pool: &PgPool) -> DbResult<String> {
    Ok(
        sqlx::query_scalar("select current_setting('server_version')")
            .fetch_one(pool)
            .await?,
    )
}
