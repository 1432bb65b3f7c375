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
use crate::{events, parse_enum};

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
    let item = crate::transitions::lock_item_to_resume(&mut tx, item_id).await?;
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
    let project_id = item.project_id;
    let why = damascus_core::Unblock::Answered {
        on_answer,
        rounds: item.rounds_per_answer,
    };
    let resumed_in = crate::transitions::resume_blocked(&mut tx, item_id, &item, why)
        .await?
        .map(|resumed| resumed.phase);
    if let Some(resume) = resumed_in {
        events::record(
            &mut tx,
            Some(item_id),
            Some(project_id),
            "item.phase_changed",
            &json!({ "from": Phase::Blocked, "to": resume, "reason": "answered", "human_issue_id": issue_id }),
        )
        .await?;
    }
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
