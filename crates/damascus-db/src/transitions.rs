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

/// Records the counted verdicts of runs of distinct items, all locked by the caller:
/// every item's move and its `item.phase_changed` event in one statement (one round
/// trip however many), then a human issue for each that blocks. The transitions come
/// back in the order given.
pub(crate) async fn apply_verdicts(
    conn: &mut PgConnection,
    runs: &[(LockedItem, i32, &Verdict)],
) -> DbResult<Vec<Transition>> {
    let transitions: Vec<Transition> = runs
        .iter()
        .map(|(item, _, verdict)| decide(item.phase, item.budget, verdict))
        .collect();
    let mut rows = VerdictRows::default();
    for ((item, attempt, verdict), transition) in runs.iter().zip(&transitions) {
        rows.push(item, *attempt, verdict, transition);
    }
    sqlx::query(
        "with v as (
            select * from unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::int[],
                $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::jsonb[])
            as v (id, phase, resume_phase, phase_attempts, attempts_total, verdict, reason,
                  spec, test_command, branch, pr_url, payload)
         ), moved as (
            update work_items w set phase = v.phase::work_phase,
                resume_phase = v.resume_phase::work_phase, phase_attempts = v.phase_attempts,
                attempts_total = v.attempts_total, last_verdict = v.verdict::verdict_kind,
                last_verdict_reason = v.reason, spec = coalesce(v.spec, w.spec),
                test_command = coalesce(v.test_command, w.test_command),
                branch = coalesce(v.branch, w.branch), pr_url = coalesce(v.pr_url, w.pr_url)
            from v where w.id = v.id
            returning w.id, w.project_id, v.payload)
         insert into events_outbox (item_id, project_id, kind, payload)
         select id, project_id, 'item.phase_changed', payload from moved",
    )
    .bind(&rows.id)
    .bind(&rows.phase)
    .bind(&rows.resume_phase)
    .bind(&rows.phase_attempts)
    .bind(&rows.attempts_total)
    .bind(&rows.verdict)
    .bind(&rows.reason)
    .bind(&rows.spec)
    .bind(&rows.test_command)
    .bind(&rows.branch)
    .bind(&rows.pr_url)
    .bind(&rows.payload)
    .execute(&mut *conn)
    .await?;
    for ((item, _, verdict), transition) in runs.iter().zip(&transitions) {
        if let Some(question) = &transition.question {
            let context = match verdict {
                Verdict::NeedsHuman { context, .. } => context.clone(),
                Verdict::Fail { log_tail, .. } => log_tail.clone(),
                _ => String::new(),
            };
            let resume = transition.resume_phase.unwrap_or(item.phase);
            let on_answer = damascus_core::on_answer(resume, verdict.kind());
            open_human_issue(conn, item, resume, on_answer, question, &context).await?;
        }
    }
    Ok(transitions)
}

/// The columns of `apply_verdicts`' statement, one array per column.
#[derive(Default)]
struct VerdictRows {
    id: Vec<i64>,
    phase: Vec<&'static str>,
    resume_phase: Vec<Option<&'static str>>,
    phase_attempts: Vec<i32>,
    attempts_total: Vec<i32>,
    verdict: Vec<&'static str>,
    reason: Vec<Option<String>>,
    spec: Vec<Option<serde_json::Value>>,
    test_command: Vec<Option<String>>,
    branch: Vec<Option<String>>,
    pr_url: Vec<Option<String>>,
    payload: Vec<serde_json::Value>,
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
        Verdict::TransientError { reason } => (Some(reason.clone()), None),
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

impl VerdictRows {
    fn push(&mut self, item: &LockedItem, attempt: i32, verdict: &Verdict, to: &Transition) {
        let VerdictColumns {
            reason,
            output,
            payload,
        } = verdict_columns(item, attempt, verdict, to);
        self.payload.push(payload);
        self.id.push(item.id);
        self.phase.push(to.phase.as_str());
        self.resume_phase.push(to.resume_phase.map(Phase::as_str));
        self.phase_attempts.push(to.phase_attempts);
        self.attempts_total.push(to.attempts_total);
        self.verdict.push(verdict.kind().as_str());
        self.reason.push(reason);
        self.spec.push(output.and_then(|o| o.spec.clone()));
        self.test_command
            .push(output.and_then(|o| o.test_command.clone()));
        self.branch.push(output.and_then(|o| o.branch.clone()));
        self.pr_url.push(output.and_then(|o| o.pr_url.clone()));
    }
}

/// One claim's entry in `damascus_end_group`'s `p_ends`: the claim, the item as the
/// transition was decided from (the fence), what to write (the same columns and event
/// as `apply_verdicts`), and the run's costs (as `record_costs` writes them).
pub(crate) fn group_end_entry(
    claim: (uuid::Uuid, uuid::Uuid),
    item: &LockedItem,
    attempt: i32,
    verdict: &Verdict,
    to: &Transition,
    costs: &[CostEntry],
) -> serde_json::Value {
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
                "usd": cost.usd.max(0.0),
            })
        })
        .collect();
    json!({
        "claim": claim.0.to_string(),
        "job": claim.1.to_string(),
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
    })
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
    let on_answer =
        damascus_core::on_answer(item.phase, damascus_core::VerdictKind::TransientError);
    open_human_issue(conn, item, item.phase, on_answer, question, context).await
}

/// Opens the item's question: `phase` is the phase it left (re-run as it is by a
/// retry), `on_answer` where an answer resumes it.
async fn open_human_issue(
    conn: &mut PgConnection,
    item: &LockedItem,
    phase: Phase,
    on_answer: Phase,
    question: &str,
    context: &str,
) -> DbResult<()> {
    let issue_id: Option<i64> = sqlx::query_scalar(
        "insert into human_issues (item_id, phase, on_answer, question, context)
         values ($1, $2::work_phase, $5::work_phase, $3, $4)
         on conflict (item_id) where status = 'open' do nothing
         returning id",
    )
    .bind(item.id)
    .bind(phase.as_str())
    .bind(question)
    .bind(context)
    .bind(on_answer.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    events::record(
        conn,
        Some(item.id),
        Some(item.project_id),
        "item.blocked",
        &json!({ "human_issue_id": issue_id, "question": question, "resume_phase": phase, "on_answer": on_answer }),
    )
    .await?;
    Ok(())
}
