//! A database release 0.1.0 made (the baseline migration alone) upgrades through the
//! later migrations with its work under way, and finishes it.

use std::time::Duration;

use damascus_core::{PhaseReport, Verdict};
use damascus_db::budget::{self, Reservation};
use damascus_db::{jobs, migrate};
use damascus_testdb::TestDatabase;

const BASELINE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../migrations/20261201000000_baseline.sql"
);

/// Under the baseline a reservation lapsed with its claim's slot; after the upgrade a
/// reservation counts until it is settled. A lapsed one must not start counting, and
/// one of a claim still running keeps holding until that claim ends.
#[tokio::test]
async fn a_baseline_database_with_claims_under_way_upgrades_and_finishes_them() {
    let db = TestDatabase::empty().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(BASELINE, dir.path().join("20261201000000_baseline.sql")).unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    for sql in [
        "insert into projects (name, repository) values ('web', '/srv/web.git')",
        "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total, cost_budget_usd)
         select id, 'item ' || g, 3, 10, 1 from projects, generate_series(1, 2) g",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let info = jobs::WorkerInfo {
        host: "test".into(),
        pid: 1,
        lease: Duration::from_secs(30),
    };
    let worker = jobs::register_worker(&db.pool, &info, Some(4))
        .await
        .unwrap()
        .id;
    let claimed = jobs::claim(&db.pool, worker, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for job in &claimed {
        let item = job.target.unwrap().item_id;
        assert_eq!(
            budget::reserve(&db.pool, job.claim, item).await.unwrap(),
            Reservation::Granted(1.0)
        );
    }
    // The first claim ended under the baseline: its slot let go, its reservation lapsed
    // (left in the table until its project's next reservation).
    sqlx::query(
        "update damascus_slots set job_id = null, worker_id = null, claim_token = null,
             claimed_at = null, lease_until = null
         where claim_token = $1",
    )
    .bind(claimed[0].claim)
    .execute(&db.pool)
    .await
    .unwrap();

    assert_eq!(
        migrate::apply(&db.pool).await.unwrap(),
        migrate::MIGRATOR.iter().count() - 1
    );

    let held: Vec<uuid::Uuid> = sqlx::query_scalar("select claim_token from budget_reservations")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        held,
        [claimed[1].claim],
        "only the running claim's reservation holds"
    );
    let report: PhaseReport = Verdict::pass().into();
    let ended = jobs::finish(&db.pool, worker, &claimed[1], &report)
        .await
        .unwrap();
    assert!(matches!(ended, jobs::Ended::Advanced { .. }), "{ended:?}");
    let (reservations, unknown): (i64, i64) = sqlx::query_as(
        "select (select count(*) from budget_reservations),
                (select count(*) from cost_ledger where model like '%spend unknown%')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (reservations, unknown),
        (0, 0),
        "the verdict settled the reservation"
    );
}
