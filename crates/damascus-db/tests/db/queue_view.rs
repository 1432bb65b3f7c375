//! A job in one row: `damascus_queue` shows every job (one `damascus_jobs` row) with its
//! item, project, phase, state, attempt, runs left, when it may run, who holds it and
//! its last error, as a person at a psql prompt reads the queue.

use std::time::Duration;

use damascus_core::{NewProject, ProjectName, Story};
use damascus_db::jobs::{self, WorkerInfo};
use damascus_db::{items, projects};
use damascus_testdb::TestDatabase;

type Row = (
    i64,
    String,
    String,
    String,
    i32,
    i32,
    Option<String>,
    Option<i32>,
    Option<String>,
);

#[tokio::test]
async fn damascus_queue_shows_each_job_with_its_state_and_holder_in_one_row() {
    let db = TestDatabase::new().await;
    let name = ProjectName::parse("web").unwrap();
    projects::add_project(
        &db.pool,
        &NewProject::local(name.clone(), "/srv/git/web.git"),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for title in ["running", "waiting out a retry", "dead", "queued"] {
        let story = Story::new(title, "As a user I want it.").unwrap();
        ids.push(
            items::ingest(&db.pool, &name, &story, "test")
                .await
                .unwrap()
                .id,
        );
    }
    let info = WorkerInfo {
        host: "build-7".into(),
        pid: 4242,
        lease: Duration::from_secs(30),
    };
    let worker = jobs::register_worker(&db.pool, &info, Some(4))
        .await
        .unwrap();
    let claimed = jobs::claim(&db.pool, worker.id, 1, info.lease)
        .await
        .unwrap();
    assert_eq!(
        claimed[0].target.unwrap().item_id,
        ids[0],
        "the oldest job first"
    );
    sqlx::query(
        "update damascus_jobs set run_at = now() + interval '1 hour', runs = 1,
            last_error = 'forge timed out' where item_id = $1",
    )
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "update damascus_jobs set run_at = now() - interval '1 second', runs = max_runs,
            last_error = 'worker lost' where item_id = $1",
    )
    .bind(ids[2])
    .execute(&db.pool)
    .await
    .unwrap();
    let rows: Vec<Row> = sqlx::query_as(
        "select item_id, project, phase::text, state, attempt, attempts_left, worker_host,
                worker_pid, last_error
         from damascus_queue order by item_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let host = || Some("build-7".to_owned());
    let s = |v: &str| v.to_owned();
    assert_eq!(
        rows,
        [
            (
                ids[0],
                s("web"),
                s("spec"),
                s("running"),
                1,
                4,
                host(),
                Some(4242),
                None
            ),
            (
                ids[1],
                s("web"),
                s("spec"),
                s("retry_wait"),
                1,
                4,
                None,
                None,
                Some(s("forge timed out"))
            ),
            (
                ids[2],
                s("web"),
                s("spec"),
                s("dead"),
                1,
                0,
                None,
                None,
                Some(s("worker lost"))
            ),
            (
                ids[3],
                s("web"),
                s("spec"),
                s("queued"),
                1,
                5,
                None,
                None,
                None
            ),
        ]
    );
    // One row per job, and a job is one row of one table besides its slot.
    let jobs: i64 = sqlx::query_scalar("select count(*) from damascus_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, rows.len() as i64);
    // The running job's lease and the time the others may run are shown too.
    let (lease_set, runnable_set): (bool, bool) = sqlx::query_as(
        "select bool_and(lease_until is not null) filter (where state = 'running'),
                bool_and(runnable_at is not null)
         from damascus_queue",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(lease_set && runnable_set);
}
