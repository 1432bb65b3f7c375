//! Ending a claim: finishing it with a verdict (one claim, many, or a group end that
//! also claims the next jobs), retrying it later, or releasing it, each in one
//! transaction with the item change, its events and what the run spent (its reported
//! costs, or its reservations as spend unknown: `budget::Spend`), fenced on the claim
//! token (slot row, then item row, then queue row). It must not take claims except through
//! `damascus_end_group`, nor reap jobs no worker holds (that is `maintenance`).

use std::time::Duration;

use damascus_core::{decide, CostEntry, Phase, PhaseReport, Verdict};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::claim::{claimed_jobs, ClaimedJob, CLAIM_COLUMNS};
use super::{interval, JobTarget, WorkerId};
use crate::budget::{self, Spend};
use crate::error::DbResult;
use crate::events;
use crate::transitions::{blocked_entry, lock_item, record_costs, record_verdicts, verdict_entry};

/// How ending a claim went.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The verdict was recorded and the item moved from `from` to `to`.
    Advanced { from: Phase, to: Phase },
    /// The job will run again at the earliest after `delay`.
    RetryScheduled { delay: Duration, attempts_left: i32 },
    /// The job ran out of attempts; its item is blocked with a human issue.
    Exhausted,
    /// The job waits until `until`, with its run given back (a forge's rate limit).
    Deferred { until: std::time::SystemTime },
    /// The job went back to the queue untouched (shutdown).
    Released,
    /// The item had moved on (cancelled, moved by hand) or was gone; the result was dropped.
    Superseded,
    /// Another worker holds the job now; nothing was written.
    LostClaim,
}

/// Locks the slot that holds this claim; `false` when the claim was lost.
async fn lock_claim(conn: &mut PgConnection, worker: WorkerId, job: &ClaimedJob) -> DbResult<bool> {
    let held: Option<i32> = sqlx::query_scalar(
        "select slot from damascus_slots where job_id = $1 and claim_token = $2 and worker_id = $3 for update",
    )
    .bind(job.job_id)
    .bind(job.claim)
    .bind(worker.0)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(held.is_some())
}

/// Frees the job's slot and deletes the job (its `damascus_jobs` row goes with it).
pub(crate) async fn delete_job(conn: &mut PgConnection, job: Uuid) -> DbResult<()> {
    sqlx::query("select damascus_delete_job($1)")
        .bind(job)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records what a run that ends spent, under its claim (held, its item locked): its
/// reported costs, which settle its reservations, or its reservations as spend unknown.
async fn record_spend(conn: &mut PgConnection, job: &ClaimedJob, spend: Spend<'_>) -> DbResult<()> {
    match spend {
        Spend::Reported(costs) => {
            if let Some(target) = job.target {
                record_costs(conn, target.item_id, target.phase, target.attempt, costs).await?;
            }
            budget::settle(conn, job.claim).await
        }
        Spend::Unreported { why } => {
            budget::record_unreported(conn, &[job.claim], why).await?;
            Ok(())
        }
    }
}

/// Records what the run spent, deletes the job and asks for its item to be looked at
/// again (`damascus_look_again`), so that an item that may still run gets the job it
/// should have.
async fn supersede(conn: &mut PgConnection, job: &ClaimedJob, spend: Spend<'_>) -> DbResult<Ended> {
    record_spend(conn, job, spend).await?;
    delete_job(conn, job.job_id).await?;
    if let Some(target) = job.target {
        sqlx::query("select damascus_look_again(array[$1::bigint])")
            .bind(target.item_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ended::Superseded)
}

/// The common start of every verdict-bearing end: the claim's slot, then the item,
/// locked in that order. `Err` is how the end already went: a lost claim (nothing to
/// commit) or a superseded job (dropped, its item nudged; commit that).
async fn lock_for_end(
    conn: &mut PgConnection,
    worker: WorkerId,
    job: &ClaimedJob,
    spend: Spend<'_>,
) -> DbResult<Result<(JobTarget, crate::transitions::LockedItem), Ended>> {
    // The common case in one round trip: the claim's slot and its item together. No
    // one locks an item and then a slot, so taking both in one statement is safe.
    if let Some(target) = job.target {
        let claim = [(job.claim, job.job_id, target.item_id)];
        let mut locked = crate::transitions::lock_claimed_items(conn, worker.0, &claim).await?;
        if let Some(item) = locked.remove(&job.claim) {
            if item.phase != target.phase {
                return Ok(Err(supersede(conn, job, spend).await?));
            }
            return Ok(Ok((target, item)));
        }
    }
    lock_for_end_by_parts(conn, worker, job, spend).await
}

/// `lock_for_end` one row at a time: the claim's slot, then its item. For the claims
/// the one-statement lock did not find (lost, or their item is gone).
async fn lock_for_end_by_parts(
    conn: &mut PgConnection,
    worker: WorkerId,
    job: &ClaimedJob,
    spend: Spend<'_>,
) -> DbResult<Result<(JobTarget, crate::transitions::LockedItem), Ended>> {
    if !lock_claim(conn, worker, job).await? {
        return Ok(Err(Ended::LostClaim));
    }
    let Some(target) = job.target else {
        return Ok(Err(supersede(conn, job, spend).await?));
    };
    let item = lock_item(conn, target.item_id).await?;
    if item.phase != target.phase {
        return Ok(Err(supersede(conn, job, spend).await?));
    }
    Ok(Ok((target, item)))
}

/// Records a pass, fail or needs-human verdict: deletes the job, moves the item, opens
/// a human issue if it blocks, writes the events; the trigger spawns the next job. One
/// transaction.
pub async fn finish(
    pool: &PgPool,
    worker: WorkerId,
    job: &ClaimedJob,
    report: &PhaseReport,
) -> DbResult<Ended> {
    let mut ended = finish_many(pool, worker, &[(job, report)]).await?;
    Ok(ended.remove(0))
}

/// Records the verdicts of several claims in one transaction: each claim ends exactly
/// as `finish` would end it alone (fenced on its claim token, its job deleted before its
/// item moves so the trigger spawns the next, its events written), and the batch only
/// shares the round trips and the commit. All of them commit, or none. The results come
/// back in the order given. This is the path for every kind of end; `end_group` is the
/// one-call path for the common kinds.
pub async fn finish_many(
    pool: &PgPool,
    worker: WorkerId,
    ends: &[(&ClaimedJob, &PhaseReport)],
) -> DbResult<Vec<Ended>> {
    let mut tx = pool.begin().await?;
    let claims: Vec<(Uuid, Uuid, i64)> = ends
        .iter()
        .filter_map(|(job, _)| job.target.map(|t| (job.claim, job.job_id, t.item_id)))
        .collect();
    let mut locked = if claims.is_empty() {
        Default::default()
    } else {
        crate::transitions::lock_claimed_items(&mut tx, worker.0, &claims).await?
    };
    let mut results: Vec<Option<Ended>> = vec![None; ends.len()];
    // (index in `ends`, target, locked item) of the claims whose verdict is recorded.
    let mut recorded = Vec::new();
    for (n, (job, report)) in ends.iter().enumerate() {
        let found = job.target.zip(locked.remove(&job.claim));
        let spend = Spend::Reported(&report.costs);
        let end = match found {
            Some((target, item)) if item.phase == target.phase => Ok((target, item)),
            Some(_) => Err(supersede(&mut tx, job, spend).await?),
            None => lock_for_end_by_parts(&mut tx, worker, job, spend).await?,
        };
        match end {
            Ok((target, item)) => recorded.push((n, target, item)),
            Err(ended) => results[n] = Some(ended),
        }
    }
    if !recorded.is_empty() {
        // The followers a run decided for (a merge-queue batch) move first, so that the
        // head's release of the queue's lock hands it to an item still waiting, never to
        // one recorded here.
        let batch: Vec<&damascus_core::BatchVerdict> = recorded
            .iter()
            .flat_map(|(n, _, _)| ends[*n].1.batch.iter())
            .collect();
        if !batch.is_empty() {
            let ids: Vec<i64> = batch.iter().map(|b| b.item_id).collect();
            let followers = crate::transitions::lock_waiting_in_review(&mut tx, &ids).await?;
            let entries: Vec<_> = batch
                .iter()
                .filter_map(|b| {
                    let item = followers.iter().find(|f| f.id == b.item_id)?;
                    let to = decide(item.phase, item.budget, &b.verdict);
                    let attempt = item.budget.phase_attempts + 1;
                    Some(verdict_entry(
                        None,
                        item,
                        attempt,
                        &b.verdict,
                        &to,
                        &[],
                        None,
                    ))
                })
                .collect();
            record_verdicts(&mut tx, &entries).await?;
        }
        // The heads go through the group end's own statement, fenced on the claims and
        // items locked above, so a verdict of a claim is written one way only.
        let mut entries = Vec::with_capacity(recorded.len());
        for (n, target, item) in &recorded {
            let (job, report) = ends[*n];
            let to = decide(item.phase, item.budget, &report.verdict);
            let claim = Some((job.claim, job.job_id));
            entries.push(verdict_entry(
                claim,
                item,
                target.attempt,
                &report.verdict,
                &to,
                &report.costs,
                None,
            ));
            results[*n] = Some(Ended::Advanced {
                from: item.phase,
                to: to.phase,
            });
        }
        record_locked_ends(&mut tx, worker, &entries).await?;
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every end is decided"))
        .collect())
}

/// What to claim with a group end.
#[derive(Debug, Clone, Copy)]
pub struct ClaimNext {
    /// At most this many: the size of the group (the slots it frees when every end is
    /// recorded; ends left for `finish` keep theirs and count as running).
    pub max: u32,
    /// Phases this worker runs besides the group's.
    pub running_besides: u32,
    pub lease: Duration,
}

/// What `end_group` did.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEnded {
    /// How each claim ended, in the order given; `None` when it was not recorded here
    /// (its claim is lost, its item changed since the claim, or its report decides for
    /// a merge-queue batch): end those with `finish`, which handles each of these.
    pub ended: Vec<Option<Ended>>,
    /// The jobs claimed for the freed slots.
    pub claimed: Vec<ClaimedJob>,
}

/// The group commit's hot path, one statement (`damascus_end_group`; its own
/// transaction unless `conn` has one open): records the verdicts whose item is still as
/// it was at the claim, with the transition decided here from that snapshot, and claims
/// the next jobs for the slots they free, up to this worker's fair share of the cap
/// (the cap over the live workers, rounded down but at least one, less
/// `running_besides` and the ends not recorded): a process that finishes phases keeps
/// no more than its share, and the slots it frees beyond that are left for the others
/// (a NOTIFY wakes them). Each recorded verdict is written exactly as `finish_many`
/// writes it.
pub async fn end_group(
    conn: &mut PgConnection,
    worker: WorkerId,
    ends: &[(&ClaimedJob, &PhaseReport)],
    claim_next: Option<ClaimNext>,
) -> DbResult<GroupEnded> {
    let mut entries = Vec::new();
    let mut decided = Vec::with_capacity(ends.len());
    for (job, report) in ends {
        let fast = match (job.target, job.item) {
            (Some(target), Some(item))
                if item.phase == target.phase
                    && report.batch.is_empty()
                    && !matches!(
                        report.verdict,
                        Verdict::TransientError { .. } | Verdict::Deferred { .. }
                    ) =>
            {
                let to = decide(item.phase, item.budget, &report.verdict);
                let locked = crate::transitions::LockedItem {
                    id: target.item_id,
                    project_id: item.project_id,
                    phase: item.phase,
                    budget: item.budget,
                };
                entries.push(verdict_entry(
                    Some((job.claim, job.job_id)),
                    &locked,
                    target.attempt,
                    &report.verdict,
                    &to,
                    &report.costs,
                    None,
                ));
                Some(Ended::Advanced {
                    from: item.phase,
                    to: to.phase,
                })
            }
            _ => None,
        };
        decided.push(fast);
    }
    let next = claim_next.unwrap_or(ClaimNext {
        max: 0,
        running_besides: 0,
        lease: Duration::ZERO,
    });
    if entries.is_empty() && next.max == 0 {
        return Ok(GroupEnded {
            ended: vec![None; ends.len()],
            claimed: Vec::new(),
        });
    }
    let (recorded, claimed) = call_end_group(conn, worker, &entries, next).await?;
    Ok(GroupEnded {
        ended: ends
            .iter()
            .zip(decided)
            .map(|((job, _), ended)| ended.filter(|_| recorded.contains(&job.claim)))
            .collect(),
        claimed,
    })
}

/// `damascus_end_group`: records the entries whose claim and item are as they say
/// (fenced), then claims as `next` says. Returns the claims recorded and the jobs
/// claimed.
async fn call_end_group(
    conn: &mut PgConnection,
    worker: WorkerId,
    entries: &[serde_json::Value],
    next: ClaimNext,
) -> DbResult<(std::collections::HashSet<Uuid>, Vec<ClaimedJob>)> {
    let rows = sqlx::query(&format!(
        "select recorded, {CLAIM_COLUMNS} from damascus_end_group($1, $2, $3, $4, $5)"
    ))
    .bind(worker.0)
    .bind(sqlx::types::Json(entries))
    .bind(next.max as i32)
    .bind(next.running_besides as i32)
    .bind(interval(next.lease))
    .fetch_all(conn)
    .await?;
    let mut recorded = std::collections::HashSet::new();
    let mut claimed_rows = Vec::new();
    for row in rows {
        match row.try_get::<Option<Uuid>, _>("recorded")? {
            Some(claim) => {
                recorded.insert(claim);
            }
            None => claimed_rows.push(row),
        }
    }
    Ok((recorded, claimed_jobs(&claimed_rows)?))
}

/// Records the ends of claims whose slots and items this transaction has locked
/// (`lock_for_end`), through `damascus_end_group` like every end of a claim. Each
/// entry's fence holds under those locks, so every one is recorded.
async fn record_locked_ends(
    conn: &mut PgConnection,
    worker: WorkerId,
    entries: &[serde_json::Value],
) -> DbResult<()> {
    let none = ClaimNext {
        max: 0,
        running_besides: 0,
        lease: Duration::ZERO,
    };
    let (recorded, _) = call_end_group(conn, worker, entries, none).await?;
    if recorded.len() != entries.len() {
        return Err(crate::error::DbError::Conflict(format!(
            "{} of {} locked claims failed their fence; nothing was written",
            entries.len() - recorded.len(),
            entries.len()
        )));
    }
    Ok(())
}

/// Puts a job that hit a transient error back in the queue after `delay`, or, when it
/// has no attempts left, blocks its item with a human issue that says what failed.
/// `spend`: the run's reported costs, or why it reported none (a panic), in which case
/// what it reserved is recorded as spend unknown.
pub async fn retry_later(
    pool: &PgPool,
    worker: WorkerId,
    job: &ClaimedJob,
    reason: &str,
    spend: Spend<'_>,
    delay: Duration,
) -> DbResult<Ended> {
    let mut tx = pool.begin().await?;
    let (target, item) = match lock_for_end(&mut tx, worker, job, spend).await? {
        Ok(locked) => locked,
        Err(ended) => {
            tx.commit().await?;
            return Ok(ended);
        }
    };
    // A job whose item may not run now (its project was paused, a gate closed) is not
    // retried but withdrawn: what lets it run again (a resume, the gate opening) looks
    // at the item again.
    let may_run: bool = sqlx::query_scalar("select damascus_may_run($1, $2::work_phase, $3)")
        .bind(item.id)
        .bind(target.phase.as_str())
        .bind(item.project_id)
        .fetch_one(&mut *tx)
        .await?;
    if !may_run {
        record_spend(&mut tx, job, spend).await?;
        delete_job(&mut tx, job.job_id).await?;
        tx.commit().await?;
        return Ok(Ended::Superseded);
    }
    let attempts_left: i32 =
        sqlx::query_scalar("select max_runs - runs from damascus_jobs where job_id = $1")
            .bind(job.job_id)
            .fetch_one(&mut *tx)
            .await?;
    if attempts_left <= 0 {
        let question = format!(
            "{} of this item failed with a transient error on each of its {} runs; last error: {reason}. Fix the cause, then retry the item",
            target.phase, job.runs
        );
        let context = format!("job {}", job.job_id);
        let claim = Some((job.claim, job.job_id));
        let costs = match spend {
            Spend::Reported(costs) => costs,
            Spend::Unreported { .. } => {
                record_spend(&mut tx, job, spend).await?;
                &[]
            }
        };
        let entry = blocked_entry(claim, &item, target.attempt, &question, &context, costs);
        record_locked_ends(&mut tx, worker, &[entry]).await?;
        tx.commit().await?;
        return Ok(Ended::Exhausted);
    }
    record_spend(&mut tx, job, spend).await?;
    put_back(&mut tx, job.job_id, delay, false, Some(reason)).await?;
    events::record(
        &mut tx,
        Some(item.id),
        Some(item.project_id),
        "job.retry_scheduled",
        &json!({
            "phase": target.phase,
            "reason": reason,
            "delay_ms": delay.as_millis() as u64,
            "attempts_left": attempts_left,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Ended::RetryScheduled {
        delay,
        attempts_left,
    })
}

/// Puts a job back to wait until `until` (a forge asked to be left alone until then),
/// with the run it used given back: a wait is not an attempt, so no number of waits
/// blocks the item. The costs of the run are recorded; `reason` shows as the job's last
/// error (`damascus_queue`, status) and in a `job.waiting` event.
pub async fn defer(
    pool: &PgPool,
    worker: WorkerId,
    job: &ClaimedJob,
    reason: &str,
    costs: &[CostEntry],
    until: std::time::SystemTime,
) -> DbResult<Ended> {
    let spend = Spend::Reported(costs);
    let mut tx = pool.begin().await?;
    let (target, item) = match lock_for_end(&mut tx, worker, job, spend).await? {
        Ok(locked) => locked,
        Err(ended) => {
            tx.commit().await?;
            return Ok(ended);
        }
    };
    record_spend(&mut tx, job, spend).await?;
    // A deadline already past waits for nothing.
    let wait = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    put_back(&mut tx, job.job_id, wait, true, Some(reason)).await?;
    let until_at = chrono::DateTime::<chrono::Utc>::from(until);
    events::record(
        &mut tx,
        Some(item.id),
        Some(item.project_id),
        "job.waiting",
        &json!({ "phase": target.phase, "reason": reason, "until": until_at }),
    )
    .await?;
    tx.commit().await?;
    Ok(Ended::Deferred { until })
}

/// Gives a job back, runnable at once, with the attempt it used returned: the worker
/// is shutting down, the job did nothing wrong. A run stopped for it reported nothing:
/// what it reserved is recorded as spend unknown.
pub async fn release(pool: &PgPool, worker: WorkerId, job: &ClaimedJob) -> DbResult<Ended> {
    let mut tx = pool.begin().await?;
    if !lock_claim(&mut tx, worker, job).await? {
        return Ok(Ended::LostClaim);
    }
    if let Some(target) = job.target {
        // The item's row before its reservations, the order every end takes.
        match lock_item(&mut tx, target.item_id).await {
            Ok(_) => {
                let why = "the worker stopped the run at shutdown";
                budget::record_unreported(&mut tx, &[job.claim], why).await?;
            }
            // Its reservations went with it.
            Err(crate::error::DbError::ItemNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    put_back(&mut tx, job.job_id, Duration::ZERO, true, None).await?;
    tx.commit().await?;
    Ok(Ended::Released)
}

/// Puts a claimed job back in the queue, runnable after `delay`, and frees its slot,
/// which wakes the other workers. `give_back_run`: the run it used is returned (a
/// release); `last_error`: why it waits (a retry).
async fn put_back(
    conn: &mut PgConnection,
    job: Uuid,
    delay: Duration,
    give_back_run: bool,
    last_error: Option<&str>,
) -> DbResult<()> {
    sqlx::query(
        "update damascus_jobs
         set run_at = now() + $2, runs = greatest(runs - $3, 0),
             last_error = coalesce($4, last_error)
         where job_id = $1",
    )
    .bind(job)
    .bind(interval(delay))
    .bind(i32::from(give_back_run))
    .bind(last_error)
    .execute(&mut *conn)
    .await?;
    sqlx::query("select damascus_free_slot($1)")
        .bind(job)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
