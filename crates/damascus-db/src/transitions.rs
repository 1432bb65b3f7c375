//! Applying a phase's verdict to its item: the item row, its human issue when it blocks,
//! and its events. These run inside the caller's transaction (the one that also deletes
//! or reschedules the job), so a verdict is recorded completely or not at all; the
//! `work_items_spawn_job` trigger adds the next job in the same transaction.

use damascus_core::{Budget, CostEntry, Phase, Transition, Verdict};
use serde_json::json;
use sqlx::{PgConnection, Row};

use crate::error::{DbError, DbResult};
use crate::parse_enum;

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

/// Locks the slots of several claims of one worker and their items together, slots in
/// slot order; returns the locked item of each claim still held, by claim token (a
/// claim not held, or whose item is gone, is missing).
pub(crate) async fn lock_claimed_items(
    conn: &mut PgConnection,
    worker: i64,
    claims: &[(uuid::Uuid, uuid::Uuid, i64)],
) -> DbResult<std::collections::HashMap<uuid::Uuid, LockedItem>> {
    let (tokens, jobs, items): (Vec<_>, Vec<_>, Vec<_>) = claims.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut t, mut j, mut i), (token, job, item)| {
            t.push(*token);
            j.push(*job);
            i.push(*item);
            (t, j, i)
        },
    );
    let rows = sqlx::query(
        "select c.claim, i.id, i.project_id, i.phase::text as phase, i.phase_attempts,
                i.attempts_total, i.max_attempts_per_phase, i.max_attempts_total
         from unnest($1::uuid[], $2::uuid[], $3::bigint[]) as c (claim, job, item)
         join damascus_slots s on s.claim_token = c.claim and s.job_id = c.job and s.worker_id = $4
         join work_items i on i.id = c.item
         order by s.slot
         for update of s, i",
    )
    .bind(&tokens)
    .bind(&jobs)
    .bind(&items)
    .bind(worker)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("claim")?, locked_item_from_row(row)?)))
        .collect()
}

/// Locks the items among `ids` that wait in review with no job of their own (merge-queue
/// followers, whose head's transaction records them), in id order; the others are
/// left out.
pub(crate) async fn lock_waiting_in_review(
    conn: &mut PgConnection,
    ids: &[i64],
) -> DbResult<Vec<LockedItem>> {
    let rows = sqlx::query(
        "select i.id, i.project_id, i.phase::text as phase, i.phase_attempts, i.attempts_total,
                i.max_attempts_per_phase, i.max_attempts_total
         from work_items i
         where i.id = any($1) and i.phase = 'review'
           and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
         order by i.id
         for update of i",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(locked_item_from_row).collect()
}

fn locked_item_from_row(row: &sqlx::postgres::PgRow) -> DbResult<LockedItem> {
    Ok(LockedItem {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        phase: parse_enum(row, "phase")?,
        budget: budget_from_row(row, "")?,
    })
}

/// An item's budget from a row whose item columns are named `{prefix}phase_attempts`
/// and so on.
pub(crate) fn budget_from_row(row: &sqlx::postgres::PgRow, prefix: &str) -> DbResult<Budget> {
    let column = |name: &str| format!("{prefix}{name}");
    Ok(Budget {
        phase_attempts: row.try_get(column("phase_attempts").as_str())?,
        attempts_total: row.try_get(column("attempts_total").as_str())?,
        max_attempts_per_phase: row.try_get(column("max_attempts_per_phase").as_str())?,
        max_attempts_total: row.try_get(column("max_attempts_total").as_str())?,
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
            "insert into cost_ledger (item_id, phase, attempt, source, model, tokens_in, tokens_out, usd, tokens_cached, price)
             values ($1, $2::work_phase, $3, $4::cost_source, $5, $6, $7, $8::numeric, $9, $10)",
        )
        .bind(item_id)
        .bind(phase.as_str())
        .bind(attempt.max(1))
        .bind(cost.source.as_str())
        .bind(&cost.model)
        .bind(cost.tokens_in.max(0))
        .bind(cost.tokens_out.max(0))
        .bind(cost.usd.max(0.0))
        .bind(cost.tokens_cached.max(0))
        .bind(&cost.price)
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

/// Records decided verdicts of items the caller has locked (`damascus_record_verdicts`,
/// the one place a verdict is written), for runs that hold no claim: the followers a
/// merge-queue head decided for, and a dead job's item. Verdicts of claims are
/// recorded through `damascus_end_group`, which fences the claim first.
pub(crate) async fn record_verdicts(
    conn: &mut PgConnection,
    entries: &[serde_json::Value],
) -> DbResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::query("select damascus_record_verdicts($1)")
        .bind(sqlx::types::Json(entries))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a verdict writes into its item and its event, beyond the transition itself.
struct VerdictColumns<'a> {
    reason: Option<String>,
    output: Option<&'a damascus_core::PhaseOutput>,
    payload: serde_json::Value,
}

fn verdict_columns<'a>(
    item: &LockedItem,
    attempt: i32,
    verdict: &'a Verdict,
    to: &Transition,
) -> VerdictColumns<'a> {
    let (reason, output) = match verdict {
        Verdict::Pass(output) => (None, Some(output)),
        Verdict::Fail { reason, .. } => (Some(reason.clone()), None),
        Verdict::NeedsHuman { question, .. } => (Some(question.clone()), None),
        Verdict::TransientError { reason } | Verdict::Deferred { reason, .. } => {
            (Some(reason.clone()), None)
        }
    };
    let log_tail = match verdict {
        Verdict::Fail { log_tail, .. } => Some(log_tail.as_str()),
        _ => None,
    };
    let payload = json!({
        "from": item.phase,
        "to": to.phase,
        "verdict": verdict.kind(),
        "reason": reason,
        "log_tail": log_tail,
        "attempt": attempt,
        "attempts_total": to.attempts_total,
    });
    VerdictColumns {
        reason,
        output,
        payload,
    }
}

/// What a blocked item's question shows beside it: the person's context of a
/// needs-human verdict, the log tail of a failure.
fn question_context(verdict: &Verdict) -> String {
    match verdict {
        Verdict::NeedsHuman { context, .. } => context.clone(),
        Verdict::Fail { log_tail, .. } => log_tail.clone(),
        _ => String::new(),
    }
}

/// One verdict as `damascus_record_verdicts` and `damascus_end_group` take it: the
/// claim (claim token, job) when a claim ran it, the item as the transition was decided
/// from (the fence), what `decide` made of it, the verdict's columns and event, the
/// run's costs, and the question it asks when it blocks, with `context` beside it (by
/// default the verdict's own: a question's context, a failure's log tail).
pub(crate) fn verdict_entry(
    claim: Option<(uuid::Uuid, uuid::Uuid)>,
    item: &LockedItem,
    attempt: i32,
    verdict: &Verdict,
    to: &Transition,
    costs: &[CostEntry],
    context: Option<&str>,
) -> serde_json::Value {
    let context = context.map_or_else(|| question_context(verdict), str::to_owned);
    let VerdictColumns {
        reason,
        output,
        payload,
    } = verdict_columns(item, attempt, verdict, to);
    let cost_usd: f64 = costs.iter().map(|cost| cost.usd.max(0.0)).sum();
    let costs: Vec<_> = costs
        .iter()
        .map(|cost| {
            json!({
                "source": cost.source.as_str(),
                "model": cost.model,
                "tokens_in": cost.tokens_in.max(0),
                "tokens_out": cost.tokens_out.max(0),
                "tokens_cached": cost.tokens_cached.max(0),
                "price": cost.price,
                "usd": cost.usd.max(0.0),
            })
        })
        .collect();
    let resume = to.resume_phase.unwrap_or(item.phase);
    json!({
        "claim": claim.map(|c| c.0.to_string()),
        "job": claim.map(|c| c.1.to_string()),
        "item": item.id,
        "from_phase": item.phase.as_str(),
        "from_phase_attempts": item.budget.phase_attempts,
        "from_attempts_total": item.budget.attempts_total,
        "from_max_per_phase": item.budget.max_attempts_per_phase,
        "from_max_total": item.budget.max_attempts_total,
        "attempt": attempt.max(1),
        "phase": to.phase.as_str(),
        "resume_phase": to.resume_phase.map(Phase::as_str),
        "phase_attempts": to.phase_attempts,
        "attempts_total": to.attempts_total,
        "verdict": verdict.kind().as_str(),
        "reason": reason,
        "spec": output.and_then(|o| o.spec.clone()),
        "test_command": output.and_then(|o| o.test_command.clone()),
        "branch": output.and_then(|o| o.branch.clone()),
        "pr_url": output.and_then(|o| o.pr_url.clone()),
        "payload": payload,
        "cost_usd": cost_usd,
        "costs": costs,
        "question": to.question,
        "context": to.question.as_ref().map(|_| context),
        "on_answer": to.question.as_ref().map(|_| damascus_core::on_answer(resume, verdict.kind()).as_str()),
    })
}

/// The entry that blocks an item that could not finish its phase (a job out of
/// retries, a lost worker): a transient error that asks `question`, its counters as
/// they are, `context` shown beside the question.
pub(crate) fn blocked_entry(
    claim: Option<(uuid::Uuid, uuid::Uuid)>,
    item: &LockedItem,
    attempt: i32,
    question: &str,
    context: &str,
    costs: &[CostEntry],
) -> serde_json::Value {
    let to = Transition {
        phase: Phase::Blocked,
        resume_phase: Some(item.phase),
        phase_attempts: item.budget.phase_attempts,
        attempts_total: item.budget.attempts_total,
        question: Some(question.to_owned()),
    };
    let verdict = Verdict::TransientError {
        reason: question.to_owned(),
    };
    verdict_entry(claim, item, attempt, &verdict, &to, costs, Some(context))
}

/// An item as unblocking reads it, locked for the rest of the transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ItemToResume {
    pub project_id: i64,
    pub phase: Phase,
    /// The phase it left, when it is blocked.
    pub left: Option<Phase>,
    pub budget: Budget,
    /// Its project's rounds per answer.
    pub rounds_per_answer: i32,
}

/// Locks an item (`FOR UPDATE`) and reads what unblocking it needs.
pub(crate) async fn lock_item_to_resume(
    conn: &mut PgConnection,
    item_id: i64,
) -> DbResult<ItemToResume> {
    let row = sqlx::query(
        "select i.project_id, i.phase::text as phase, i.resume_phase::text as resume_phase,
                i.phase_attempts, i.attempts_total, i.max_attempts_per_phase,
                i.max_attempts_total, p.rounds_per_answer
         from work_items i join projects p on p.id = i.project_id
         where i.id = $1 for update of i",
    )
    .bind(item_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DbError::ItemNotFound(item_id))?;
    Ok(ItemToResume {
        project_id: row.try_get("project_id")?,
        phase: parse_enum(&row, "phase")?,
        left: crate::parse_opt_enum(&row, "resume_phase")?,
        budget: budget_from_row(&row, "")?,
        rounds_per_answer: row.try_get("rounds_per_answer")?,
    })
}

/// Takes a blocked item (locked by the caller) out of `blocked` the one way there is
/// (`damascus_core::resume`): its phase and counters. `None` when it is not blocked.
/// The spawn trigger queues its job in the same transaction.
pub(crate) async fn resume_blocked(
    conn: &mut PgConnection,
    item_id: i64,
    item: &ItemToResume,
    why: damascus_core::Unblock,
) -> DbResult<Option<damascus_core::Resumption>> {
    let Some(left) = item.left.filter(|_| item.phase == Phase::Blocked) else {
        return Ok(None);
    };
    let resumed = damascus_core::resume(left, item.budget, why);
    sqlx::query(
        "update work_items set phase = $2::work_phase, resume_phase = null,
            phase_attempts = $3, attempts_total = $4, max_attempts_total = $5
         where id = $1",
    )
    .bind(item_id)
    .bind(resumed.phase.as_str())
    .bind(resumed.phase_attempts)
    .bind(resumed.attempts_total)
    .bind(resumed.max_attempts_total)
    .execute(&mut *conn)
    .await?;
    Ok(Some(resumed))
}
