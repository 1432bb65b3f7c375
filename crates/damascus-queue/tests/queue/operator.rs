//! Operator controls on the queue: pause and resume a project, retry a blocked item.

use std::time::Duration;

use damascus_db::operator;
use damascus_queue::run_until_idle;

use crate::support::{
    backend_pid, count, database, fast_config, items, listener_backend, observer, runner, wait_for,
    wait_until, wait_until_blocked_by, warm_pool, Script,
};

const JOBS: &str = "select count(*) from damascus_jobs";

#[tokio::test]
async fn a_paused_project_gets_no_jobs_until_it_resumes() {
    let db = database().await;
    items(&db.pool, 3, 3, 10).await;
    assert_eq!(count(&db.pool, JOBS).await, 3);
    assert_eq!(operator::pause_project(&db.pool, "web").await.unwrap(), 3);
    assert_eq!(count(&db.pool, JOBS).await, 0);
    // Items ingested while paused wait too, and a cycle runs nothing.
    items(&db.pool, 1, 3, 10).await;
    assert_eq!(count(&db.pool, JOBS).await, 0);
    let summary = run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(summary.claimed, 0);
    assert_eq!(operator::resume_project(&db.pool, "web").await.unwrap(), 4);
    assert_eq!(count(&db.pool, JOBS).await, 4);
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        4
    );
    let kinds: Vec<String> =
        sqlx::query_scalar("select kind from events_outbox where item_id is null order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["project.paused", "project.resumed"]);
    let err = operator::pause_project(&db.pool, "ghost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("project \"ghost\" not found"));
}

#[tokio::test]
async fn retry_gives_a_blocked_item_a_fresh_budget() {
    let db = database().await;
    let ids = items(&db.pool, 1, 2, 10).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(1),
        runner(Script::Fail, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'blocked'"
        )
        .await,
        1
    );
    let err = operator::retry(&db.pool, 999, "test").await.unwrap_err();
    assert!(err.to_string().contains("work item 999 not found"));
    assert_eq!(
        operator::retry(&db.pool, ids[0], "test").await.unwrap(),
        damascus_core::Phase::Spec
    );
    let (phase, attempts): (String, i32) =
        sqlx::query_as("select phase::text, attempts_total from work_items where id = $1")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((phase.as_str(), attempts), ("spec", 0));
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from human_issues where status = 'dismissed'"
        )
        .await,
        1
    );
    assert_eq!(count(&db.pool, JOBS).await, 1);
    let again = operator::retry(&db.pool, ids[0], "test").await.unwrap_err();
    assert!(again.to_string().contains("not blocked"), "{again}");
    // Cancel, then nothing more can be done to it.
    operator::cancel(&db.pool, ids[0], "test").await.unwrap();
    assert_eq!(count(&db.pool, JOBS).await, 0);
    let twice = operator::cancel(&db.pool, ids[0], "test")
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("already cancelled"), "{twice}");
}

async fn ingest(db: &damascus_testdb::TestDatabase, title: &str, depends_on: &[i64]) -> i64 {
    ingest_gated(db, title, depends_on, &[]).await
}

async fn ingest_gated(
    db: &damascus_testdb::TestDatabase,
    title: &str,
    depends_on: &[i64],
    locks: &[&str],
) -> i64 {
    ingest_into(db, "web", title, depends_on, locks).await
}

async fn ingest_into(
    db: &damascus_testdb::TestDatabase,
    project: &str,
    title: &str,
    depends_on: &[i64],
    locks: &[&str],
) -> i64 {
    let story = damascus_core::Story::new(title, "").unwrap();
    let project = damascus_core::ProjectName::parse(project).unwrap();
    let gates = damascus_db::items::IntakeGates {
        depends_on: depends_on.to_vec(),
        locks: damascus_core::LockName::parse_all(locks).unwrap(),
    };
    damascus_db::items::ingest_with(&db.pool, &project, &story, "test", &gates)
        .await
        .unwrap()
        .id
}

async fn jobs_of(db: &damascus_testdb::TestDatabase, id: i64) -> i64 {
    count(
        &db.pool,
        &format!("select count(*) from damascus_jobs where item_id = {id}"),
    )
    .await
}

/// Moves an item to `phase` the way a verdict would: its job goes, then the phase
/// changes (and the spawn trigger gives it the job of its new phase, if it may run).
async fn move_to(db: &damascus_testdb::TestDatabase, id: i64, phase: &str) {
    sqlx::query("delete from damascus_jobs where item_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update work_items set phase = $2::work_phase where id = $1")
        .bind(id)
        .bind(phase)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn drop_jobs(db: &damascus_testdb::TestDatabase) {
    sqlx::query("delete from damascus_jobs")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn holder(db: &damascus_testdb::TestDatabase, lock: &str) -> Option<i64> {
    sqlx::query_scalar("select item_id from named_locks where name = $1")
        .bind(lock)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Items that share a lock never review at the same time, even with free slots, and
/// every one of them merges; an item without the lock is not held back by it. (The
/// items of one repository review one at a time anyway, in its merge queue: the
/// locked items are spread over five repositories, the others over two more.)
#[tokio::test]
async fn items_sharing_a_lock_never_review_at_the_same_time() {
    let db = database().await;
    sqlx::query(
        "insert into projects (name, repository)
         select 'repo' || g, '/srv/repo' || g || '.git' from generate_series(1, 7) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut locked = Vec::new();
    for n in 1..=5 {
        let project = format!("repo{n}");
        let title = format!("schema change {n}");
        locked.push(ingest_into(&db, &project, &title, &[], &["db-schema"]).await);
    }
    let other = ingest_into(&db, "repo6", "unrelated", &[], &["docs"]).await;
    let free = ingest_into(&db, "repo7", "no lock", &[], &[]).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(4),
        runner(Script::Pass, Duration::from_millis(40)),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        7
    );
    let ids = locked
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let overlapping = count(
        &db.pool,
        &format!(
            "select count(*) from test_runs a join test_runs b on a.id < b.id
             where a.phase = 'review' and b.phase = 'review'
               and a.item_id in ({ids}) and b.item_id in ({ids})
               and a.started_at < b.ended_at and b.started_at < a.ended_at"
        ),
    )
    .await;
    assert_eq!(overlapping, 0, "two holders of db-schema reviewed at once");
    // With four slots and 40 ms phases, the unlocked items' reviews ran beside a locked one.
    let beside = count(
        &db.pool,
        &format!(
            "select count(*) from test_runs a join test_runs b on a.item_id in ({other}, {free})
             where a.phase = 'review' and b.phase = 'review' and b.item_id in ({ids})
               and a.started_at < b.ended_at and b.started_at < a.ended_at"
        ),
    )
    .await;
    assert!(beside > 0, "the lock held back items that do not share it");
    assert_eq!(
        count(&db.pool, "select count(*) from named_locks").await,
        0,
        "merged items keep no lock"
    );
}

/// Taking and handing over a lock is the database's doing: a plain UPDATE that moves
/// the holder out of review hands the lock to the item that waited longest, and spawns
/// its job in that transaction; a waiter of a paused project is passed over.
#[tokio::test]
async fn leaving_review_hands_the_lock_to_the_longest_waiter() {
    let db = database().await;
    let first = ingest_gated(&db, "first", &[], &["merge:web"]).await;
    let second = ingest_gated(&db, "second", &[], &["merge:web", "z-other"]).await;
    let third = ingest_gated(&db, "third", &[], &["merge:web"]).await;
    for id in [first, second, third] {
        move_to(&db, id, "review").await;
    }
    assert_eq!(holder(&db, "merge:web").await, Some(first));
    assert_eq!(jobs_of(&db, first).await, 1);
    assert_eq!(jobs_of(&db, second).await, 0, "second waits for merge:web");
    assert_eq!(jobs_of(&db, third).await, 0);
    // Ordered acquisition: second did not take z-other while it waits for merge:web.
    assert_eq!(holder(&db, "z-other").await, None);

    // The holder fails back to build: the lock goes to second, with its job.
    move_to(&db, first, "build").await;
    assert_eq!(holder(&db, "merge:web").await, Some(second));
    assert_eq!(holder(&db, "z-other").await, Some(second));
    assert_eq!(jobs_of(&db, second).await, 1);
    assert_eq!(jobs_of(&db, third).await, 0);
    let gates = damascus_db::items::gates_for_item(&db.pool, second)
        .await
        .unwrap();
    assert!(
        gates.iter().all(|g| g.kind == "lock" && g.open),
        "{gates:?}"
    );

    // Third's project is paused when second is cancelled: nobody takes the lock, and
    // resuming gives it to third.
    operator::pause_project(&db.pool, "web").await.unwrap();
    operator::cancel(&db.pool, second, "test").await.unwrap();
    assert_eq!(holder(&db, "merge:web").await, None);
    assert_eq!(holder(&db, "z-other").await, None);
    operator::resume_project(&db.pool, "web").await.unwrap();
    assert_eq!(holder(&db, "merge:web").await, Some(third));
    assert_eq!(jobs_of(&db, third).await, 1);
    // First, back in build, takes no lock until it reviews again.
    assert_eq!(jobs_of(&db, first).await, 1);
}

/// B depends on A: B gets no job before A merges, and gets it in A's merge
/// transaction, so the same cycle runs it without delay.
#[tokio::test]
async fn a_dependent_item_starts_when_its_dependency_merges() {
    let db = database().await;
    let a = ingest(&db, "A", &[]).await;
    let b = ingest(&db, "B", &[a]).await;
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {b}")
        )
        .await,
        0
    );
    let err = damascus_db::items::ingest_with(
        &db.pool,
        &damascus_core::ProjectName::parse("web").unwrap(),
        &damascus_core::Story::new("C", "").unwrap(),
        "test",
        &damascus_db::items::IntakeGates {
            depends_on: vec![999],
            locks: vec![],
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("work item 999 not found"));
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        2
    );
    let b_started_after_a_merged = count(
        &db.pool,
        &format!(
            "select count(*) from test_runs b where b.item_id = {b}
             and b.started_at < (select max(ended_at) from test_runs a where a.item_id = {a})"
        ),
    )
    .await;
    assert_eq!(b_started_after_a_merged, 0, "B ran before A was merged");
    // A dependency that is merged already opens the gate at once.
    let c = ingest(&db, "C", &[a]).await;
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {c}")
        )
        .await,
        1
    );
}

#[tokio::test]
async fn build_waits_for_the_specs_approval() {
    let db = database().await;
    sqlx::query("update projects set require_approval = true")
        .execute(&db.pool)
        .await
        .unwrap();
    let id = ingest(&db, "Needs approval", &[]).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    let phase: String = sqlx::query_scalar("select phase::text from work_items where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(phase, "build", "the spec passed; the build waits");
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_jobs").await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from test_runs where phase = 'build'"
        )
        .await,
        0
    );
    operator::approve(&db.pool, id, "reviewer").await.unwrap();
    let again = operator::approve(&db.pool, id, "reviewer")
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("already approved by reviewer"),
        "{again}"
    );
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        1
    );
}

/// An item entering review while the holder's release is committing is not missed:
/// the release waits for the newcomer's transaction, then hands it the lock, and
/// the newcomer gets its job without waiting for the reaper.
#[tokio::test]
async fn a_release_racing_a_newcomer_hands_it_the_lock() {
    let db = database().await;
    let holder_id = ingest_gated(&db, "holder", &[], &["db"]).await;
    let newcomer = ingest_gated(&db, "newcomer", &[], &["db"]).await;
    move_to(&db, holder_id, "review").await;
    // Only the holder's review job would run; the test drives every move itself.
    drop_jobs(&db).await;
    assert_eq!(holder(&db, "db").await, Some(holder_id));
    // The newcomer enters review and finds the lock held; its transaction stays open.
    let mut entering = db.pool.begin().await.unwrap();
    let entering_pid = backend_pid(&mut entering).await;
    sqlx::query("update work_items set phase = 'review' where id = $1")
        .bind(newcomer)
        .execute(&mut *entering)
        .await
        .unwrap();
    // Meanwhile the holder is merged, in a transaction of its own.
    let mut releasing = db.pool.acquire().await.unwrap();
    let releasing_pid = backend_pid(&mut releasing).await;
    let release = tokio::spawn(async move {
        sqlx::query("update work_items set phase = 'merged' where id = $1")
            .bind(holder_id)
            .execute(&mut *releasing)
            .await
            .unwrap();
    });
    // The release is waiting for the newcomer's transaction before that commits.
    wait_until_blocked_by(&db.pool, entering_pid, Some(releasing_pid)).await;
    entering.commit().await.unwrap();
    release.await.unwrap();
    assert_eq!(holder(&db, "db").await, Some(newcomer));
    assert_eq!(jobs_of(&db, newcomer).await, 1);
}

/// Two releases at once, each handing its lock toward one item that needs both: no
/// deadlock, and the item ends up holding both with its job.
#[tokio::test]
async fn two_releases_at_once_toward_one_waiter_do_not_deadlock() {
    let db = database().await;
    let x = ingest_gated(&db, "x", &[], &["l"]).await;
    let z = ingest_gated(&db, "z", &[], &["m"]).await;
    let w = ingest_gated(&db, "w", &[], &["l", "m"]).await;
    for id in [x, z, w] {
        move_to(&db, id, "review").await;
    }
    assert_eq!(jobs_of(&db, w).await, 0);
    drop_jobs(&db).await;
    let merge = |id: i64| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            sqlx::query("update work_items set phase = 'merged' where id = $1")
                .bind(id)
                .execute(&pool)
                .await
        })
    };
    let (a, b) = (merge(x), merge(z));
    a.await.unwrap().expect("no deadlock");
    b.await.unwrap().expect("no deadlock");
    assert_eq!(holder(&db, "l").await, Some(w));
    assert_eq!(holder(&db, "m").await, Some(w));
    assert_eq!(jobs_of(&db, w).await, 1);
}

/// A pool (reaper round ten minutes away) and a lock "db" just released by its holder
/// while the only waiter's row was held by `busy`: the waiter was passed over.
async fn waiter_passed_over(
    db: &damascus_testdb::TestDatabase,
) -> (
    i64,
    damascus_queue::WorkerPool,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let holder_id = ingest_gated(db, "holder", &[], &["db"]).await;
    let waiter = ingest_gated(db, "waiter", &[], &["db"]).await;
    move_to(db, holder_id, "review").await;
    move_to(db, waiter, "review").await;
    assert_eq!(jobs_of(db, waiter).await, 0, "the waiter waits for db");
    // The holder's job is the test's to end; the pool runs only what it is given.
    drop_jobs(db).await;
    let config = damascus_queue::QueueConfig {
        reap_interval: Duration::from_secs(600),
        shutdown_grace: Duration::from_millis(100),
        ..fast_config(2)
    };
    let pool = damascus_queue::WorkerPool::start(
        warm_pool(&db.url).await,
        config,
        runner(Script::HangFirstRun, Duration::ZERO),
    )
    .await
    .unwrap();
    // Before the release, the pool listens (it must hear the hand-over's request), and
    // its reaper's first round has passed its respawn step (the next round is ten minutes
    // away): a respawn pass that runs after the release is the one the request started.
    let watch = observer(&db.url).await;
    listener_backend(&watch).await;
    wait_until(
        &watch,
        &format!(
            "select exists (select 1 from pg_stat_activity where datname = current_database()
              and state = 'idle' and query like '{RESPAWN_PASS}%')"
        ),
        "the reaper's first round to pass its respawn step",
        Duration::from_secs(20),
    )
    .await;
    watch.close().await;
    let mut busy = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from work_items where id = $1 for update")
        .bind(waiter)
        .execute(&mut *busy)
        .await
        .unwrap();
    sqlx::query("update work_items set phase = 'merged' where id = $1")
        .bind(holder_id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        holder(db, "db").await,
        None,
        "the busy waiter was passed over"
    );
    (waiter, pool, busy)
}

/// A waiter whose row is busy at the release is passed over (a release never waits for
/// a waiter's row), and the lock stays free for that moment; the workers hear of it
/// and hand it the lock as soon as its row is free, not at the reaper's next round.
#[tokio::test]
async fn a_waiter_passed_over_while_busy_gets_the_lock_once_its_row_is_free() {
    let db = database().await;
    let (waiter, pool, mut busy) = waiter_passed_over(&db).await;
    // The respawn pass is waiting for the busy row when it is freed.
    let busy_pid = backend_pid(&mut busy).await;
    wait_until_respawn_waits_for(&db, busy_pid).await;
    busy.commit().await.unwrap();
    wait_for(
        &db.pool,
        &format!("select count(*) from named_locks where name = 'db' and item_id = {waiter}"),
        1,
        Duration::from_secs(5),
    )
    .await;
    wait_for(
        &db.pool,
        &format!("select count(*) from test_runs where item_id = {waiter}"),
        1,
        Duration::from_secs(5),
    )
    .await;
    pool.shutdown().await;
}

/// The respawn pass waits for the busy row; stopping the pool does not wait for it.
#[tokio::test]
async fn a_pool_stops_while_its_respawn_waits_for_a_busy_row() {
    let db = database().await;
    let (_, pool, mut busy) = waiter_passed_over(&db).await;
    let busy_pid = backend_pid(&mut busy).await;
    wait_until_respawn_waits_for(&db, busy_pid).await;
    tokio::time::timeout(Duration::from_secs(5), pool.shutdown())
        .await
        .expect("the pool stopped while the waiter's row was still held");
    busy.rollback().await.unwrap();
}

/// How the statement of a respawn pass (`jobs::respawn_jobless`, also the reaper's last
/// step) begins, to find it in `pg_stat_activity`.
const RESPAWN_PASS: &str = "select damascus_look_again(array(";

/// Waits until the pool's respawn pass waits for a row lock held by backend `blocker`.
async fn wait_until_respawn_waits_for(db: &damascus_testdb::TestDatabase, blocker: i32) {
    wait_until(
        &db.pool,
        &format!(
            "select exists (select 1 from pg_stat_activity a
              where a.datname = current_database() and a.wait_event_type = 'Lock'
                and {blocker} = any(pg_blocking_pids(a.pid))
                and a.query like '{RESPAWN_PASS}%')"
        ),
        "the respawn pass to wait for the busy row",
        Duration::from_secs(10),
    )
    .await;
}
