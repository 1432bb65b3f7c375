//! Applying a phase's verdict to its item: the item row, its human issue when it blocks,
//! and its events. These run inside the caller's transaction (the one that also deletes
//! or reschedules the job), so a verdict is recorded completely or not at all; the
//! `work_items_spawn_job` trigger adds the next job in the same transaction.

use damascus_core::{decide, Budget, CostEntry, Phase, Transition, Verdict};
use serde_json::json;
use sqlx::{PgConnection, Row};

use crate::error::{DbError, DbResult};
use crate::{events, parse_enum};

/// The item fields a transition reads, locked for the rest of the transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockedItem {
    pub id: i64,
    pub project_id: i64,
    pub phase: Phase,
    pub budget: Budget,
}

/// Locks the item row (`FOR UPDATE`), so that concurrent transitions of one item
/// serialise and each sees the other's result.
pub(crate) async fn lock_item(conn: &mut PgConnection, item_id: i64) -> DbResult<LockedItem> {
    let row = sqlx::query(
        "select id, project_id, phase::text as phase, phase_attempts, attempts_total,
                max_attempts_per_phase, max_attempts_total
         from work_items where id = $1 for update",
    )
    .bind(item_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DbError::ItemNotFound(item_id))?;
    locked_item_from_row(&row)
}

/// Locks the slot holding a claim and the item together (`None`: the claim is not
/// held, or the item is gone).
pub(crate) async fn lock_claimed_item(
    conn: &mut PgConnection,
    worker: i64,
    job: uuid::Uuid,
    claim: uuid::Uuid,
    item_id: i64,
) -> DbResult<Option<LockedItem>> {
    let row = sqlx::query(
        "select i.id, i.project_id, i.phase::text as phase, i.phase_attempts, i.attempts_total,
                i.max_attempts_per_phase, i.max_attempts_total
         from damascus_slots s, work_items i
         where s.job_id = $1 and s.claim_token = $2 and s.worker_id = $3 and i.id = $4
         for update of s, i",
    )
    .bind(job)
    .bind(claim)
    .bind(worker)
    .bind(item_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(locked_item_from_row).transpose()
}

fn locked_item_from_row(row: &sqlx::postgres::PgRow) -> DbResult<LockedItem> {
    Ok(LockedItem {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        phase: parse_enum(row, "phase")?,
        budget: Budget {
            phase_attempts: row.try_get("phase_attempts")?,
            attempts_total: row.try_get("attempts_total")?,
            max_attempts_per_phase: row.try_get("max_attempts_per_phase")?,
            max_attempts_total: row.try_get("max_attempts_total")?,
        },
    })
}

/// Records what a run spent: one ledger row per call, and the item's running total.
pub(crate) async fn record_costs(
    conn: &mut PgConnection,
    item_id: i64,
    phase: Phase,
    attempt: i32,
    costs: &[CostEntry],
) -> DbResult<()> {
    if costs.is_empty() {
        return Ok(());
    }
    let mut total = 0.0;
    for cost in costs {
        sqlx::query(
            "insert into cost_ledger (item_id, phase, attempt, source, model, tokens_in, tokens_out, usd)
             values ($1, $2::work_phase, $3, $4::cost_source, $5, $6, $7, $8::numeric)",
        )
        .bind(item_id)
        .bind(phase.as_str())
        .bind(attempt.max(1))
        .bind(cost.source.as_str())
        .bind(&cost.model)
        .bind(cost.tokens_in.max(0))
        .bind(cost.tokens_out.max(0))
        .bind(cost.usd.max(0.0))
        .execute(&mut *conn)
        .await?;
        total += cost.usd.max(0.0);
    }
    sqlx::query("update work_items set cost_usd = cost_usd + $2::numeric where id = $1")
        .bind(item_id)
        .bind(total)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records a counted verdict (pass, fail, needs-human) of a run in `item.phase`.
pub(crate) async fn apply_verdict(
    conn: &mut PgConnection,
    item: &LockedItem,
    attempt: i32,
    verdict: &Verdict,
) -> DbResult<Transition> {
    let transition = decide(item.phase, item.budget, verdict);
    let (reason, output) = match verdict {
        Verdict::Pass(output) => (None, Some(output)),
        Verdict::Fail { reason, .. } => (Some(reason.as_str()), None),
        Verdict::NeedsHuman { question, .. } => (Some(question.as_str()), None),
        Verdict::TransientError { reason } => (Some(reason.as_str()), None),
    };
    let log_tail = match verdict {
        Verdict::Fail { log_tail, .. } => Some(log_tail.as_str()),
        _ => None,
    };
    let payload = json!({
        "from": item.phase,
        "to": transition.phase,
        "verdict": verdict.kind(),
        "reason": reason,
        "log_tail": log_tail,
        "attempt": attempt,
        "attempts_total": transition.attempts_total,
    });
    // The item's move and its event in one statement: one round trip on the hot path.
    sqlx::query(
        "with moved as (
            update work_items set phase = $2::work_phase, resume_phase = $3::work_phase,
                phase_attempts = $4, attempts_total = $5, last_verdict = $6::verdict_kind,
                last_verdict_reason = $7, spec = coalesce($8, spec),
                test_command = coalesce($9, test_command), branch = coalesce($10, branch),
                pr_url = coalesce($11, pr_url)
            where id = $1
            returning id, project_id)
         insert into events_outbox (item_id, project_id, kind, payload)
         select id, project_id, 'item.phase_changed', $12 from moved",
    )
    .bind(item.id)
    .bind(transition.phase.as_str())
    .bind(transition.resume_phase.map(Phase::as_str))
    .bind(transition.phase_attempts)
    .bind(transition.attempts_total)
    .bind(verdict.kind().as_str())
    .bind(reason)
    .bind(output.and_then(|o| o.spec.clone()))
    .bind(output.and_then(|o| o.test_command.clone()))
    .bind(output.and_then(|o| o.branch.clone()))
    .bind(output.and_then(|o| o.pr_url.clone()))
    .bind(&payload)
    .execute(&mut *conn)
    .await?;
    if let Some(question) = &transition.question {
        let context = match verdict {
            Verdict::NeedsHuman { context, .. } => context.clone(),
            Verdict::Fail { log_tail, .. } => log_tail.clone(),
            _ => String::new(),
        };
        let resume = transition.resume_phase.unwrap_or(item.phase);
        open_human_issue(conn, item, resume, question, &context).await?;
    }
    Ok(transition)
}

/// Blocks an item that could not finish its phase (a job out of retries, a lost
/// worker), with a human issue that says what failed.
pub(crate) async fn block_item(
    conn: &mut PgConnection,
    item: &LockedItem,
    question: &str,
    context: &str,
) -> DbResult<()> {
    sqlx::query(
        "update work_items set phase = 'blocked', resume_phase = $2::work_phase,
            last_verdict = 'transient_error', last_verdict_reason = $3
         where id = $1",
    )
    .bind(item.id)
    .bind(item.phase.as_str())
    .bind(question)
    .execute(&mut *conn)
    .await?;
    events::record(
        conn,
        Some(item.id),
        Some(item.project_id),
        "item.phase_changed",
        &json!({ "from": item.phase, "to": Phase::Blocked, "verdict": "transient_error", "reason": question }),
    )
    .await?;
    open_human_issue(conn, item, item.phase, question, context).await
}

async fn open_human_issue(
    conn: &mut PgConnection,
    item: &LockedItem,
    phase: Phase,
    question: &str,
    context: &str,
) -> DbResult<()> {
    let issue_id: Option<i64> = sqlx::query_scalar(
        "insert into human_issues (item_id, phase, question, context) values ($1, $2::work_phase, $3, $4)
         on conflict (item_id) where status = 'open' do nothing
         returning id",
    )
    .bind(item.id)
    .bind(phase.as_str())
    .bind(question)
    .bind(context)
    .fetch_optional(&mut *conn)
    .await?;
    events::record(
        conn,
        Some(item.id),
        Some(item.project_id),
        "item.blocked",
        &json!({ "human_issue_id": issue_id, "question": question, "resume_phase": phase }),
    )
    .await?;
    Ok(())
}
