//! A pause is exact: a claim under way when a pause is asked for commits before the
//! pause does (the phase started before the pause), never after it.

use std::time::Duration;

use damascus_db::{jobs, operator};
use damascus_testdb::TestDatabase;

#[tokio::test]
async fn a_claim_under_way_commits_before_the_pause_that_races_it() {
    let db = TestDatabase::new().await;
    let (_, worker) = crate::one_item_and_a_worker(&db).await;

    // A claim under way: its statement ran, its transaction has not committed.
    let mut claim = db.pool.begin().await.unwrap();
    let claimed: Vec<uuid::Uuid> =
        sqlx::query_scalar("select claim_token from damascus_claim($1, 1, interval '30 seconds')")
            .bind(worker.id.0)
            .fetch_all(&mut *claim)
            .await
            .unwrap();
    assert_eq!(claimed.len(), 1, "the job is being claimed");

    let pool = db.pool.clone();
    let pause = tokio::spawn(async move { operator::pause_project(&pool, "web").await });
    // The pause waits for the claim: it shows in pg_locks as a lock not granted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid
             where not l.granted and a.query like '%damascus_slots%for update%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !pause.is_finished(),
            "the pause committed while a claim was under way: that phase starts after the pause"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pause never waited for the claim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    claim.commit().await.unwrap();
    let withdrawn = pause.await.unwrap().unwrap();
    assert_eq!(
        withdrawn, 0,
        "the job was claimed before the pause: it runs, it is not withdrawn"
    );
    // After the pause, nothing of the project can be claimed.
    let after = jobs::claim(&db.pool, worker.id, 2, crate::worker_info().lease)
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
}
