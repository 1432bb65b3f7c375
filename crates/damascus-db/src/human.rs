//! Answering a person's question: the issue is answered and its item resumes where the
//! question says an answer takes it (`on_answer`: a failed change is rebuilt, anything
//! else resumes the phase it left), with a fresh phase budget and enough total attempts
//! for one round from there to merged, in one transaction; the spawn trigger gives the
//! item its job, so the next worker picks it up at once. The answer reaches the next
//! prompt through the item's answered issues.

use damascus_core::Phase;
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::error::{DbError, DbResult};
use crate::items::HumanIssue;
use crate::{events, parse_enum, parse_opt_enum};

/// How answering went.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub issue: HumanIssue,
    /// The phase the item resumed in, when the answer unblocked it.
    pub resumed_in: Option<Phase>,
}

pub async fn answer(
    pool: &PgPool,
    issue_id: i64,
    answer: &str,
    answered_by: &str,
) -> DbResult<Answered> {
    if answer.trim().is_empty() {
        return Err(DbError::Constraint(
            "the answer is empty; write what the item should do".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    // Lock order: the item, then its issue, as cancel and retry do (they lock the item
    // and then dismiss its question).
    let item_id: i64 = sqlx::query_scalar("select item_id from human_issues where id = $1")
        .bind(issue_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(DbError::HumanIssueNotFound(issue_id))?;
    sqlx::query("select 1 from work_items where id = $1 for update")
        .bind(item_id)
        .execute(&mut *tx)
        .await?;
    let asked = sqlx::query(
        "select status::text as status, on_answer::text as on_answer from human_issues where id = $1 for update",
    )
    .bind(issue_id)
    .fetch_one(&mut *tx)
    .await?;
    let status: String = asked.try_get("status")?;
    let on_answer: Phase = parse_enum(&asked, "on_answer")?;
    if status != "open" {
        return Err(DbError::HumanIssueClosed {
            id: issue_id,
            status,
        });
    }
    sqlx::query(
        "update human_issues set status = 'answered', answer = $2, answered_by = $3, resolved_at = now() where id = $1",
    )
    .bind(issue_id)
    .bind(answer)
    .bind(answered_by)
    .execute(&mut *tx)
    .await?;
    let item = sqlx::query(
        "select i.project_id, i.phase::text as phase, i.resume_phase::text as resume_phase,
                p.rounds_per_answer
         from work_items i join projects p on p.id = i.project_id
         where i.id = $1 for update of i",
    )
    .bind(item_id)
    .fetch_one(&mut *tx)
    .await?;
    let project_id: i64 = item.try_get("project_id")?;
    let rounds: i32 = item.try_get("rounds_per_answer")?;
    let phase: Phase = parse_enum(&item, "phase")?;
    let resume: Option<Phase> = parse_opt_enum(&item, "resume_phase")?;
    let resumed_in = match (phase, resume) {
        (Phase::Blocked, Some(_)) => {
            let resume = on_answer;
            // A fresh per-phase budget, and room for the project's number of rounds
            // (one by default) from there to merged: the person changed something.
            sqlx::query(
                "update work_items set phase = $2::work_phase, resume_phase = null, phase_attempts = 0,
                    max_attempts_total = greatest(max_attempts_total, attempts_total + $3)
                 where id = $1",
            )
            .bind(item_id)
            .bind(resume.as_str())
            .bind(damascus_core::runs_to_merge(resume) * rounds)
            .execute(&mut *tx)
            .await?;
            events::record(
                &mut tx,
                Some(item_id),
                Some(project_id),
                "item.phase_changed",
                &json!({ "from": Phase::Blocked, "to": resume, "reason": "answered", "human_issue_id": issue_id }),
            )
            .await?;
            Some(resume)
        }
        _ => None,
    };
    events::record(
        &mut tx,
        Some(item_id),
        Some(project_id),
        "human_issue.answered",
        &json!({ "human_issue_id": issue_id, "answered_by": answered_by, "resumed_in": resumed_in }),
    )
    .await?;
    let issue = crate::items::human_issues_for_item(&mut *tx, item_id)
        .await?
        .into_iter()
        .find(|i| i.id == issue_id)
        .expect("the issue just answered exists");
    tx.commit().await?;
    Ok(Answered { issue, resumed_in })
}
