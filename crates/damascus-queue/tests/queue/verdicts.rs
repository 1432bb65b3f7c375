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
        count(&db.pool, "select count(*) from damascus_jobs").await,
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
    assert_eq!(held_slots(&db.pool).await, 0);
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
        count(&db.pool, "select count(*) from damascus_jobs").await,
        0
    );
}

/// A claim that takes more free slots than there are ready jobs still takes a lapsed
/// job away from the slot that named it, even when that slot is one of the free ones
/// and ends up with no job: the old claim is gone for good (its keep-alive and its end
/// are refused), and one slot names the job.
#[tokio::test]
async fn a_reclaimed_job_is_named_by_one_slot_only() {
    let db = database().await;
    review_items(&db.pool, 3).await;
    let old = test_worker(&db.pool, 1, 3).await;
    let new = test_worker(&db.pool, 2, 3).await;
    let mut held = jobs::claim(&db.pool, old, 3, Duration::from_secs(5))
        .await
        .unwrap();
    held.sort_by_key(|j| j.slot);
    assert_eq!(held.iter().map(|j| j.slot).collect::<Vec<_>>(), [1, 2, 3]);
    // Slots 1 and 2 end; slot 3's lease lapses, its job ready again.
    let pass = Verdict::pass().into();
    let ends: Vec<_> = held[..2].iter().map(|job| (job, &pass)).collect();
    jobs::finish_many(&db.pool, old, &ends).await.unwrap();
    let lapsed = &held[2];
    sqlx::query("update damascus_slots set lease_until = now() - interval '1 second' where claim_token = $1")
        .bind(lapsed.claim)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update damascus_jobs set run_at = now() - interval '1 second' where job_id = $1")
        .bind(lapsed.job_id)
        .execute(&db.pool)
        .await
        .unwrap();
    // Three slots free (1, 2 and the lapsed 3), one ready job: it goes to slot 1.
    let taken = jobs::claim(&db.pool, new, 3, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].job_id, taken[0].slot), (lapsed.job_id, 1));
    assert_eq!(
        count(
            &db.pool,
            &format!(
                "select count(*) from damascus_slots where job_id = '{}'",
                lapsed.job_id
            )
        )
        .await,
        1
    );
    let kept = jobs::keep_alive(&db.pool, &[lapsed.claim], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(kept.is_empty(), "the old claim is not kept alive");
    let grouped = jobs::end_group(
        &mut db.pool.acquire().await.unwrap(),
        old,
        &[(lapsed, &pass)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(grouped.ended, [None]);
    assert_eq!(
        jobs::finish(&db.pool, old, lapsed, &pass).await.unwrap(),
        Ended::LostClaim
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
    sqlx::query("delete from damascus_jobs where item_id = $1")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reaped = jobs::reap(&db.pool).await.unwrap();
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

/// Claims `n` jobs (all of them must be claimable), in item order.
async fn claim_by_item(
    pool: &sqlx::PgPool,
    worker: jobs::WorkerId,
    n: u32,
) -> Vec<jobs::ClaimedJob> {
    let mut claimed = jobs::claim(pool, worker, n, Duration::from_secs(5))
        .await
        .unwrap();
    claimed.sort_by_key(|j| j.target.unwrap().item_id);
    assert_eq!(claimed.len(), n as usize);
    claimed
}

/// `n` items in review (a pass merges them: no next job).
async fn review_items(pool: &sqlx::PgPool, n: i64) {
    // Each in a repository of its own: the items of one repository review one at a
    // time, in its merge queue.
    sqlx::query(
        "with p as (
            insert into projects (name, repository)
            select 'review' || g, '/srv/review' || g || '.git' from generate_series(1, $1) g
            returning id)
         insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total)
         select p.id, 'item ' || p.id, 'review', 3, 10 from p",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Ends `jobs` with a pass in one group end; `next` is (max, running besides) of the
/// claim that follows.
async fn pass_group(
    pool: &sqlx::PgPool,
    worker: jobs::WorkerId,
    jobs: &[jobs::ClaimedJob],
    next: Option<(u32, u32)>,
) -> jobs::GroupEnded {
    let pass = Verdict::pass().into();
    let ends: Vec<_> = jobs.iter().map(|job| (job, &pass)).collect();
    let next = next.map(|(max, running_besides)| jobs::ClaimNext {
        max,
        running_besides,
        lease: Duration::from_secs(5),
    });
    jobs::end_group(&mut pool.acquire().await.unwrap(), worker, &ends, next)
        .await
        .unwrap()
}

/// An item's one `item.phase_changed` event, with the item's last verdict, its reason
/// and its total attempts.
async fn last_move(
    pool: &sqlx::PgPool,
    item: i64,
) -> (serde_json::Value, String, Option<String>, i32) {
    sqlx::query_as(
        "select e.payload, i.last_verdict::text, i.last_verdict_reason, i.attempts_total
         from events_outbox e join work_items i on i.id = e.item_id
         where e.item_id = $1 and e.kind = 'item.phase_changed'",
    )
    .bind(item)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// How many slots hold a job.
async fn held_slots(pool: &sqlx::PgPool) -> i64 {
    count(
        pool,
        "select count(*) from damascus_slots where job_id is not null",
    )
    .await
}

/// (item, phase) of every item, in item order.
async fn phase_of_each_item(pool: &sqlx::PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("select id, phase::text from work_items order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Lets `job`'s lease run out and has `other` claim it.
async fn lose_claim_to(pool: &sqlx::PgPool, job: &jobs::ClaimedJob, other: jobs::WorkerId) {
    sqlx::query("update damascus_slots set lease_until = now() - interval '1 second' where claim_token = $1")
        .bind(job.claim)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("update damascus_jobs set run_at = now() - interval '1 second' where job_id = $1")
        .bind(job.job_id)
        .execute(pool)
        .await
        .unwrap();
    let stolen = jobs::claim(pool, other, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(stolen[0].job_id, job.job_id);
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
    let claimed = claim_by_item(&db.pool, worker, 4).await;
    let item_of = |n: usize| claimed[n].target.unwrap().item_id;
    // 1: its lease is lost to another worker. 2: moved by hand while it ran.
    lose_claim_to(&db.pool, &claimed[1], other).await;
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
    assert_eq!(
        phase_of_each_item(&db.pool).await,
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
    assert_eq!(held_slots(&db.pool).await, 1);
}

/// The one-statement group end records a verdict only when its claim is held and its
/// item is exactly as it was at the claim, and then writes what `finish` would (the
/// item, the event, the costs, the next job, the question of a verdict that blocks);
/// every other end is left untouched for
/// `finish` to end alone: a lost claim, an item moved by hand, and an item whose budget
/// was changed by hand (the worker decided a retry from the
/// claim's snapshot; the lowered budget makes it a block, decided anew).
#[tokio::test]
async fn a_group_end_records_only_what_is_as_claimed_and_leaves_the_rest_to_finish() {
    let db = database().await;
    let ids = items(&db.pool, 6, 2, 10).await;
    let worker = test_worker(&db.pool, 1, 6).await;
    let other = test_worker(&db.pool, 2, 6).await;
    let claimed = claim_by_item(&db.pool, worker, 6).await;
    let item = claimed[0].item.expect("the claim reads its item");
    assert_eq!(item.phase, damascus_core::Phase::Spec);
    assert_eq!(item.budget.max_attempts_per_phase, 2);
    let item_of = |n: usize| claimed[n].target.unwrap().item_id;
    // 1: its lease is lost to another worker.
    lose_claim_to(&db.pool, &claimed[1], other).await;
    // 2: moved by hand while it ran. 4: its budget lowered by hand while it ran.
    sqlx::query("update work_items set phase = 'review' where id = $1")
        .bind(item_of(2))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update work_items set max_attempts_per_phase = 1 where id = $1")
        .bind(item_of(4))
        .execute(&db.pool)
        .await
        .unwrap();
    let paid = damascus_core::PhaseReport {
        verdict: Verdict::pass(),
        costs: vec![damascus_core::CostEntry {
            source: damascus_core::CostSource::Llm,
            model: "m1".into(),
            tokens_in: 120,
            tokens_out: 30,
            tokens_cached: 100,
            price: Some("m1 at 1/0.1/5 USD per Mtok".into()),
            usd: 0.25,
        }],
        batch: Vec::new(),
    };
    let pass = Verdict::pass().into();
    let ask = damascus_core::PhaseReport::from(Verdict::NeedsHuman {
        question: "which database?".into(),
        context: "two are configured".into(),
    });
    let fail = damascus_core::PhaseReport::from(Verdict::Fail {
        reason: "tests failed".into(),
        log_tail: "1 failed".into(),
    });
    let ends = [
        (&claimed[0], &paid),
        (&claimed[1], &pass),
        (&claimed[2], &pass),
        (&claimed[3], &ask),
        (&claimed[4], &fail),
        (&claimed[5], &fail),
    ];
    let grouped = jobs::end_group(&mut db.pool.acquire().await.unwrap(), worker, &ends, None)
        .await
        .unwrap();
    let spec_to = |to| {
        Some(Ended::Advanced {
            from: damascus_core::Phase::Spec,
            to,
        })
    };
    assert_eq!(
        grouped.ended,
        [
            spec_to(damascus_core::Phase::Build),
            None,
            None,
            // A question blocks it, in the same statement.
            spec_to(damascus_core::Phase::Blocked),
            None,
            // A failed try with one left: spec again, with a new job.
            spec_to(damascus_core::Phase::Spec),
        ]
    );
    assert!(grouped.claimed.is_empty());
    // Nothing of the others was written: each still holds its slot and its job.
    assert_eq!(held_slots(&db.pool).await, 3);
    let (question, context, on_answer): (String, String, String) = sqlx::query_as(
        "select question, context, on_answer::text from human_issues where item_id = $1 and status = 'open'",
    )
    .bind(ids[3])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (question.as_str(), context.as_str(), on_answer.as_str()),
        ("which database?", "two are configured", "spec")
    );
    let blocked_event: serde_json::Value = sqlx::query_scalar(
        "select payload from events_outbox where item_id = $1 and kind = 'item.blocked'",
    )
    .bind(ids[3])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(blocked_event["question"], "which database?");
    assert_eq!(blocked_event["resume_phase"], "spec");
    assert!(blocked_event["human_issue_id"].is_i64());
    let mut alone = Vec::new();
    for (job, report) in [ends[1], ends[2], ends[4]] {
        alone.push(Some(
            jobs::finish(&db.pool, worker, job, report).await.unwrap(),
        ));
    }
    assert_eq!(
        alone,
        [
            Some(Ended::LostClaim),
            Some(Ended::Superseded),
            // Decided from the lowered budget: out of tries, blocked.
            spec_to(damascus_core::Phase::Blocked),
        ]
    );
    assert_eq!(
        phase_of_each_item(&db.pool).await,
        [
            (ids[0], "build".to_owned()),
            (ids[1], "spec".to_owned()),
            (ids[2], "review".to_owned()),
            (ids[3], "blocked".to_owned()),
            (ids[4], "blocked".to_owned()),
            (ids[5], "spec".to_owned()),
        ]
    );
    let jobs_by_item: Vec<(i64, String, i32)> =
        sqlx::query_as("select item_id, phase::text, attempt from damascus_jobs order by item_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs_by_item,
        [
            (ids[0], "build".to_owned(), 1),
            (ids[1], "spec".to_owned(), 1),
            (ids[2], "review".to_owned(), 1),
            (ids[5], "spec".to_owned(), 2),
        ]
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from human_issues where status = 'open'"
        )
        .await,
        2
    );
    let (fail_event, fail_verdict, fail_reason, _) = last_move(&db.pool, ids[5]).await;
    assert_eq!(
        fail_event,
        serde_json::json!({
            "from": "spec", "to": "spec", "verdict": "fail", "reason": "tests failed",
            "log_tail": "1 failed", "attempt": 1, "attempts_total": 1,
        })
    );
    assert_eq!(
        (fail_verdict.as_str(), fail_reason.as_deref()),
        ("fail", Some("tests failed"))
    );
    // The recorded verdict wrote what the one-by-one path writes.
    let (event, last_verdict, _, attempts) = last_move(&db.pool, ids[0]).await;
    assert_eq!(
        event,
        serde_json::json!({
            "from": "spec", "to": "build", "verdict": "pass", "reason": null,
            "log_tail": null, "attempt": 1, "attempts_total": 1,
        })
    );
    assert_eq!((last_verdict.as_str(), attempts), ("pass", 1));
    let (ledger, cost): (String, String) = sqlx::query_as(
        "select string_agg(phase::text || ' ' || attempt || ' ' || source::text || ' ' || model
                           || ' ' || tokens_in || '/' || tokens_out || ' ' || usd
                           || ' ' || tokens_cached || ' ' || coalesce(price, '-'), ', '),
                (select cost_usd::text from work_items where id = $1)
         from cost_ledger where item_id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        ledger,
        "spec 1 llm m1 120/30 0.250000 100 m1 at 1/0.1/5 USD per Mtok"
    );
    assert_eq!(cost.parse::<f64>().unwrap(), 0.25);
    // The held claims' slots are free; the stolen claim still holds one.
    assert_eq!(held_slots(&db.pool).await, 1);
}

/// A group end hands the slots it frees to the next jobs in its own statement, up
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
    // Alone, the worker takes every slot it freed.
    let alone = pass_group(&db.pool, worker, &claimed, Some((4, 0))).await;
    assert!(alone
        .ended
        .iter()
        .all(|e| matches!(e, Some(Ended::Advanced { .. }))));
    assert_eq!(alone.claimed.len(), 4);
    assert!(alone
        .claimed
        .iter()
        .all(|j| !claimed.iter().any(|c| c.job_id == j.job_id)));
    // A second live worker: a fair share is 2 of the 4 slots.
    let _other = test_worker(&db.pool, 2, 4).await;
    let shared = pass_group(&db.pool, worker, &alone.claimed, Some((4, 0))).await;
    assert_eq!(shared.claimed.len(), 2);
    // Running one more besides the group leaves room for one.
    let busier = pass_group(&db.pool, worker, &shared.claimed[..1], Some((1, 1))).await;
    assert_eq!(busier.claimed.len(), 1);
    assert_eq!(held_slots(&db.pool).await, 2);
    // A third live worker: 4 / 3 rounds down to 1, so a group of two keeps one slot
    // and leaves the other free for whichever worker claims first.
    let _third = test_worker(&db.pool, 3, 4).await;
    let running: Vec<_> = shared.claimed[1..]
        .iter()
        .chain(&busier.claimed)
        .cloned()
        .collect();
    let third_share = pass_group(&db.pool, worker, &running, Some((2, 0))).await;
    assert_eq!(third_share.claimed.len(), 1);
}

/// A group end wakes the other workers only when it leaves a slot free: one whose
/// freed slots all went to its next jobs sends no NOTIFY (its own claim took them),
/// one that frees a slot it does not take again does.
#[tokio::test]
async fn a_group_end_notifies_only_for_slots_it_leaves_free() {
    let db = database().await;
    // Items in review: a pass merges them, so no new job (whose insert notifies too).
    review_items(&db.pool, 5).await;
    let worker = test_worker(&db.pool, 1, 2).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    // The queue's channel (`damascus_job_channel()`).
    listener.listen("damascus_jobs").await.unwrap();
    let claimed = jobs::claim(&db.pool, worker, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    // Two freed, two taken.
    let taken = pass_group(&db.pool, worker, &claimed, Some((2, 0))).await;
    assert_eq!(taken.claimed.len(), 2);
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "no wake-up when every freed slot was taken");
    // Two freed, none taken.
    let left = pass_group(&db.pool, worker, &taken.claimed, None).await;
    assert!(left.claimed.is_empty());
    let woke = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        matches!(woke, Ok(Ok(_))),
        "a slot left free wakes the workers"
    );
}
