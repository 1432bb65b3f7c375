//! Verdicts move items, budgets and retries terminate, and a claim's end is fenced.

use std::time::Duration;

use damascus_core::Verdict;
use damascus_db::jobs::{self, Ended};
use damascus_queue::{run_until_idle, WorkerPool};

use crate::support::{count, database, fast_config, items, runner, test_worker, wait_for, Script};

#[tokio::test]
async fn passes_take_items_to_merged_with_one_event_per_step() {
    let db = database().await;
    let ids = items(&db.pool, 20, 3, 10).await;
    let summary = run_until_idle(
        db.pool.clone(),
        fast_config(4),
        runner(Script::Pass, Duration::ZERO),
    )
    .await
    .unwrap();
    assert_eq!(summary.claimed, 60);
    assert_eq!(summary.advanced(), 60);
    assert_eq!(
        summary.failed_groups, 0,
        "every verdict went through a group commit"
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from work_items where phase = 'merged'"
        )
        .await,
        20
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from mq_msgs where id != uuid_nil()"
        )
        .await,
        0
    );
    for id in ids {
        let steps: Vec<String> = sqlx::query_scalar(
            "select (payload->>'from') || '>' || (payload->>'to') from events_outbox
             where item_id = $1 and kind = 'item.phase_changed' order by id",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(steps, ["spec>build", "build>review", "review>merged"]);
    }
    // The worker deregistered and left every slot free.
    assert_eq!(
        count(&db.pool, "select count(*) from damascus_worker_processes").await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn failures_use_the_phase_budget_then_block_with_a_question() {
    let db = database().await;
    let ids = items(&db.pool, 1, 2, 10).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(2),
        runner(Script::Fail, Duration::ZERO),
    )
    .await
    .unwrap();
    let (phase, resume, attempts): (String, String, i32) = sqlx::query_as(
        "select phase::text, resume_phase::text, phase_attempts from work_items where id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (phase.as_str(), resume.as_str(), attempts),
        ("blocked", "spec", 2)
    );
    let question: String = sqlx::query_scalar(
        "select question from human_issues where item_id = $1 and status = 'open'",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        question.contains("failed 2 times") && question.contains("tests failed"),
        "{question}"
    );
    assert_eq!(count(&db.pool, "select count(*) from test_runs").await, 2);
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from events_outbox where kind = 'item.blocked'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_question_blocks_the_item_at_once() {
    let db = database().await;
    items(&db.pool, 1, 3, 10).await;
    run_until_idle(
        db.pool.clone(),
        fast_config(1),
        runner(Script::NeedsHuman, Duration::ZERO),
    )
    .await
    .unwrap();
    let question: String =
        sqlx::query_scalar("select question from human_issues where status = 'open'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(question, "Which database should this use?");
    assert_eq!(count(&db.pool, "select count(*) from test_runs").await, 1);
}

#[tokio::test]
async fn transient_errors_retry_with_backoff_then_block_never_silently() {
    let db = database().await;
    sqlx::query("update damascus_queue_settings set job_attempts = 3")
        .execute(&db.pool)
        .await
        .unwrap();
    let ids = items(&db.pool, 1, 3, 10).await;
    let workers = WorkerPool::start(
        db.pool.clone(),
        fast_config(1),
        runner(Script::Transient, Duration::ZERO),
    )
    .await
    .unwrap();
    wait_for(
        &db.pool,
        "select count(*) from work_items where phase = 'blocked'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let summary = workers.shutdown().await;
    assert_eq!(summary.retries_scheduled, 2);
    assert_eq!(summary.exhausted, 1);
    assert_eq!(count(&db.pool, "select count(*) from test_runs").await, 3);
    // The retries were spaced out: each run started after the previous backoff.
    let gaps: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from started_at - lag(started_at) over (order by id))::float8 from test_runs order by id offset 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(gaps.iter().all(|g| *g >= 0.009), "{gaps:?}");
    let question: String =
        sqlx::query_scalar("select question from human_issues where item_id = $1")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        question.contains("forge answered 503") && question.contains("3 runs"),
        "{question}"
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from events_outbox where kind = 'job.retry_scheduled'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from mq_msgs where id != uuid_nil()"
        )
        .await,
        0
    );
}

/// A worker whose lease ran out cannot record its verdict once another worker holds
/// the job; the holder's verdict counts, once.
#[tokio::test]
async fn an_expired_claim_cannot_end_the_job() {
    let db = database().await;
    items(&db.pool, 1, 3, 10).await;
    let slow = test_worker(&db.pool, 1, 2).await;
    let fast = test_worker(&db.pool, 2, 2).await;
    let first = jobs::claim(&db.pool, slow, 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // While the lease holds, nobody else gets the job.
    assert!(jobs::claim(&db.pool, fast, 1, Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = jobs::claim(&db.pool, fast, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].job_id, first[0].job_id);
    assert_eq!(second[0].runs, 2);
    assert!(
        jobs::keep_alive(&db.pool, &[first[0].claim], Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        jobs::finish(&db.pool, slow, &first[0], &Verdict::pass().into())
            .await
            .unwrap(),
        Ended::LostClaim
    );
    assert_eq!(
        jobs::finish(&db.pool, fast, &second[0], &Verdict::pass().into())
            .await
            .unwrap(),
        damascus_db::jobs::Ended::Advanced {
            from: damascus_core::Phase::Spec,
            to: damascus_core::Phase::Build
        }
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from events_outbox where kind = 'item.phase_changed'"
        )
        .await,
        1
    );
}

/// An item moved by hand while its phase ran: the stale result is dropped and the item
/// gets the job of its new phase.
#[tokio::test]
async fn a_result_for_a_phase_the_item_left_is_dropped() {
    let db = database().await;
    let ids = items(&db.pool, 1, 3, 10).await;
    let worker = test_worker(&db.pool, 1, 1).await;
    let claimed = jobs::claim(&db.pool, worker, 1, Duration::from_secs(5))
        .await
        .unwrap();
    sqlx::query("update work_items set phase = 'review' where id = $1")
        .bind(ids[0])
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        jobs::finish(&db.pool, worker, &claimed[0], &Verdict::pass().into())
            .await
            .unwrap(),
        Ended::Superseded
    );
    let phase: String = sqlx::query_scalar("select phase::text from damascus_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(phase, "review");
}

/// The reaper blocks the item of a job whose every attempt was lost with its worker,
/// and gives a working item whose queue row was deleted by hand a job again.
#[tokio::test]
async fn the_reaper_handles_dead_jobs_and_jobless_items() {
    let db = database().await;
    sqlx::query("update damascus_queue_settings set job_attempts = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    let ids = items(&db.pool, 2, 3, 10).await;
    let worker = test_worker(&db.pool, 1, 1).await;
    let claimed = jobs::claim(&db.pool, worker, 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(claimed[0].attempts_left, 0);
    let other = if claimed[0].target.unwrap().item_id == ids[0] {
        ids[1]
    } else {
        ids[0]
    };
    sqlx::query("select mq_delete(array_agg(job_id)) from damascus_jobs where item_id = $1")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reaped = jobs::reap(&db.pool, Duration::from_secs(60)).await.unwrap();
    assert_eq!((reaped.dead_jobs, reaped.respawned), (1, 1));
    let blocked: String = sqlx::query_scalar("select question from human_issues")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(blocked.contains("never finished"), "{blocked}");
    assert_eq!(
        count(
            &db.pool,
            &format!("select count(*) from damascus_jobs where item_id = {other}")
        )
        .await,
        1
    );
}

/// One group commit ends each claim as it would end alone: a held claim advances, a
/// lost one changes nothing, a stale one (its item moved) is dropped and its item gets
/// its new job, and a fail on the last attempt blocks with a human issue; each item's
/// events are its own, and the freed slots take new work.
#[tokio::test]
async fn a_group_commit_ends_each_claim_as_alone() {
    let db = database().await;
    let ids = items(&db.pool, 4, 1, 10).await;
    let worker = test_worker(&db.pool, 1, 4).await;
    let other = test_worker(&db.pool, 2, 4).await;
    let mut claimed = jobs::claim(&db.pool, worker, 4, Duration::from_secs(5))
        .await
        .unwrap();
    claimed.sort_by_key(|j| j.target.unwrap().item_id);
    assert_eq!(claimed.len(), 4);
    let item_of = |n: usize| claimed[n].target.unwrap().item_id;
    // 1: its lease is lost to another worker. 2: moved by hand while it ran.
    sqlx::query("update damascus_slots set lease_until = now() - interval '1 second' where claim_token = $1")
        .bind(claimed[1].claim)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update mq_msgs set attempt_at = now() - interval '1 second' where id = $1")
        .bind(claimed[1].job_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let stolen = jobs::claim(&db.pool, other, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(stolen[0].job_id, claimed[1].job_id);
    sqlx::query("update work_items set phase = 'review' where id = $1")
        .bind(item_of(2))
        .execute(&db.pool)
        .await
        .unwrap();
    let pass = Verdict::pass().into();
    let fail = damascus_core::PhaseReport::from(Verdict::Fail {
        reason: "tests failed".into(),
        log_tail: "1 failed".into(),
    });
    let ended = jobs::finish_many(
        &db.pool,
        worker,
        &[
            (&claimed[0], &pass),
            (&claimed[1], &pass),
            (&claimed[2], &pass),
            (&claimed[3], &fail),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        ended,
        [
            Ended::Advanced {
                from: damascus_core::Phase::Spec,
                to: damascus_core::Phase::Build
            },
            Ended::LostClaim,
            Ended::Superseded,
            Ended::Advanced {
                from: damascus_core::Phase::Spec,
                to: damascus_core::Phase::Blocked
            },
        ]
    );
    let phases: Vec<(i64, String)> =
        sqlx::query_as("select id, phase::text from work_items order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        phases,
        [
            (ids[0], "build".to_owned()),
            (ids[1], "spec".to_owned()),
            (ids[2], "review".to_owned()),
            (ids[3], "blocked".to_owned()),
        ]
    );
    // Each item has exactly the job its state calls for: 0 a build job, 1 the stolen
    // claim's, 2 a review job, 3 none (blocked).
    let jobs_by_item: Vec<(i64, String)> =
        sqlx::query_as("select item_id, phase::text from damascus_jobs order by item_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs_by_item,
        [
            (ids[0], "build".to_owned()),
            (ids[1], "spec".to_owned()),
            (ids[2], "review".to_owned()),
        ]
    );
    let events: Vec<(i64, String)> = sqlx::query_as(
        "select item_id, kind from events_outbox where kind in ('item.phase_changed', 'item.blocked') order by item_id, id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            (ids[0], "item.phase_changed".to_owned()),
            (ids[3], "item.phase_changed".to_owned()),
            (ids[3], "item.blocked".to_owned()),
        ]
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from human_issues where status = 'open'"
        )
        .await,
        1
    );
    // The three slots this worker held are free again; the stolen claim still holds one.
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null"
        )
        .await,
        1
    );
}

/// A group commit hands the slots it frees to the next jobs in its own transaction, up
/// to the worker's fair share of the cap: with two live workers and a cap of 4, a
/// worker keeps at most 2, and the other slots stay free for the other worker.
#[tokio::test]
async fn a_group_commit_claims_the_next_jobs_up_to_a_fair_share() {
    let db = database().await;
    items(&db.pool, 10, 3, 10).await;
    let worker = test_worker(&db.pool, 1, 4).await;
    let claimed = jobs::claim(&db.pool, worker, 4, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let pass = Verdict::pass().into();
    let ends: Vec<_> = claimed.iter().map(|job| (job, &pass)).collect();
    let next = jobs::ClaimNext {
        max: 4,
        running_besides: 0,
        lease: Duration::from_secs(5),
    };
    // Alone, the worker takes every slot it freed.
    let alone = jobs::finish_many_and_claim(&db.pool, worker, &ends, Some(next))
        .await
        .unwrap();
    assert!(alone
        .ended
        .iter()
        .all(|e| matches!(e, Ended::Advanced { .. })));
    assert_eq!(alone.claimed.len(), 4);
    assert!(alone
        .claimed
        .iter()
        .all(|j| !claimed.iter().any(|c| c.job_id == j.job_id)));
    // A second live worker: a fair share is 2 of the 4 slots.
    let _other = test_worker(&db.pool, 2, 4).await;
    let ends: Vec<_> = alone.claimed.iter().map(|job| (job, &pass)).collect();
    let shared = jobs::finish_many_and_claim(&db.pool, worker, &ends, Some(next))
        .await
        .unwrap();
    assert_eq!(shared.claimed.len(), 2);
    // Running one more besides the group leaves room for one.
    let ends: Vec<_> = shared.claimed[..1].iter().map(|job| (job, &pass)).collect();
    let busier = jobs::finish_many_and_claim(
        &db.pool,
        worker,
        &ends,
        Some(jobs::ClaimNext {
            max: 1,
            running_besides: 1,
            lease: Duration::from_secs(5),
        }),
    )
    .await
    .unwrap();
    assert_eq!(busier.claimed.len(), 1);
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from damascus_slots where job_id is not null"
        )
        .await,
        2
    );
}
