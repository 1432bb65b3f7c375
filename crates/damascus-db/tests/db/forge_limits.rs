//! What paid work leaves for the next run and what a forge asked for, as the database
//! keeps them: a build's finished steps (recorded only under a live claim, forgotten
//! when the agent's output is wanted again), a forge's deadline (only ever moved
//! later), and write turns a gap apart across every process.

use std::time::Duration;

use damascus_db::jobs;
use damascus_db::{build_steps, forge_waits};
use damascus_testdb::TestDatabase;

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

/// A project, one item in build with its job claimed: the database, the item, the claim.
async fn claimed_build() -> (TestDatabase, i64, uuid::Uuid) {
    let db = TestDatabase::new().await;
    let (item, worker) = crate::one_item_and_a_worker(&db).await;
    // Straight to build, as a spec pass would leave it (the trigger spawns its job).
    sqlx::query("delete from damascus_jobs where item_id = $1")
        .bind(item)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update work_items set phase = 'build', attempts_total = 1 where id = $1")
        .bind(item)
        .execute(&db.pool)
        .await
        .unwrap();
    let lease = crate::worker_info().lease;
    let claimed = jobs::claim(&db.pool, worker.id, 1, lease).await.unwrap();
    assert_eq!(claimed.len(), 1, "the build's job is claimed");
    (db, item, claimed[0].claim)
}

#[tokio::test]
async fn a_builds_steps_are_kept_under_its_claim_and_forgotten_when_its_output_is_wanted_again() {
    let (db, item, claim) = claimed_build().await;
    let pool = &db.pool;
    assert!(
        !build_steps::committed(pool, uuid::Uuid::new_v4(), item, C1)
            .await
            .unwrap(),
        "no claim, no step"
    );
    assert_eq!(build_steps::get(pool, item).await.unwrap(), None);
    assert!(build_steps::committed(pool, claim, item, C1).await.unwrap());
    assert!(
        !build_steps::pushed(pool, claim, item, C2).await.unwrap(),
        "only the commit recorded can be pushed"
    );
    assert!(build_steps::pushed(pool, claim, item, C1).await.unwrap());
    assert!(
        build_steps::pull_request(pool, claim, item, "https://forge/pr/1")
            .await
            .unwrap()
    );
    assert_eq!(
        build_steps::get(pool, item).await.unwrap(),
        Some(build_steps::BuildSteps {
            committed: C1.into(),
            pushed: Some(C1.into()),
            pr_url: Some("https://forge/pr/1".into()),
        })
    );
    // A new commit starts the later steps afresh.
    assert!(build_steps::committed(pool, claim, item, C2).await.unwrap());
    let steps = build_steps::get(pool, item).await.unwrap().unwrap();
    assert_eq!((steps.pushed, steps.pr_url), (None, None));

    // A transient error or a question leaves them; a counted fail forgets them.
    let set = |sql: &'static str| async move {
        sqlx::query(sql).bind(item).execute(pool).await.unwrap();
    };
    set("update work_items set last_verdict = 'transient_error', last_verdict_reason = 'x' where id = $1").await;
    set("update work_items set phase = 'blocked', resume_phase = 'build', attempts_total = attempts_total + 1, last_verdict = 'needs_human' where id = $1").await;
    assert!(
        build_steps::get(pool, item).await.unwrap().is_some(),
        "a question keeps the agent's work"
    );
    set("update work_items set phase = 'build', resume_phase = null where id = $1").await;
    assert!(
        build_steps::get(pool, item).await.unwrap().is_some(),
        "an answer resumes after it"
    );
    set("update work_items set attempts_total = attempts_total + 1, last_verdict = 'fail' where id = $1").await;
    assert_eq!(
        build_steps::get(pool, item).await.unwrap(),
        None,
        "a failed build wants the agent again"
    );

    assert!(build_steps::committed(pool, claim, item, C1).await.unwrap());
    set("update work_items set phase = 'cancelled' where id = $1").await;
    assert_eq!(
        build_steps::get(pool, item).await.unwrap(),
        None,
        "a cancelled item keeps nothing"
    );
}

#[tokio::test]
async fn a_forges_deadline_only_moves_later_and_lapses_by_itself() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let now = chrono::Utc::now();
    let later = now + chrono::Duration::seconds(60);
    let sooner = now + chrono::Duration::seconds(10);
    let kept = forge_waits::record(
        pool,
        "api.github.com#ab",
        "api.github.com",
        later,
        "secondary",
    )
    .await
    .unwrap();
    assert_eq!(kept.timestamp(), later.timestamp());
    let kept = forge_waits::record(pool, "api.github.com#ab", "api.github.com", sooner, "429")
        .await
        .unwrap();
    assert_eq!(
        kept.timestamp(),
        later.timestamp(),
        "a sooner deadline never shortens one in force"
    );
    let active = forge_waits::active(pool, "api.github.com#ab")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (active.host.as_str(), active.reason.as_str()),
        ("api.github.com", "secondary")
    );
    assert_eq!(
        forge_waits::active(pool, "api.github.com#cd")
            .await
            .unwrap(),
        None,
        "another token is not held back"
    );
    forge_waits::record(
        pool,
        "gitea.test#ef",
        "gitea.test",
        now - chrono::Duration::seconds(1),
        "past",
    )
    .await
    .unwrap();
    assert_eq!(
        forge_waits::active(pool, "gitea.test#ef").await.unwrap(),
        None
    );
    assert_eq!(forge_waits::all_active(pool).await.unwrap().len(), 1);
}

#[tokio::test]
async fn write_turns_are_a_gap_apart_whoever_takes_them() {
    let db = TestDatabase::new().await;
    let gap = Duration::from_secs(1);
    // Three processes taking a turn at once (three connections).
    let (a, b, c) = tokio::join!(
        forge_waits::take_write_turn(&db.pool, "api.github.com#ab", gap),
        forge_waits::take_write_turn(&db.pool, "api.github.com#ab", gap),
        forge_waits::take_write_turn(&db.pool, "api.github.com#ab", gap),
    );
    let mut waits = [a.unwrap(), b.unwrap(), c.unwrap()];
    waits.sort();
    let near = |got: Duration, want: f64| (got.as_secs_f64() - want).abs() < 0.3;
    assert!(
        near(waits[0], 0.0) && near(waits[1], 1.0) && near(waits[2], 2.0),
        "{waits:?}"
    );
    let other = forge_waits::take_write_turn(&db.pool, "api.github.com#cd", gap)
        .await
        .unwrap();
    assert!(
        near(other, 0.0),
        "another token has turns of its own: {other:?}"
    );
}
