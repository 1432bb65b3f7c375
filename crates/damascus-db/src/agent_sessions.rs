//! The coding agent's own session per item (`agent_sessions`): recorded after each run
//! that names one, with an `agent.session` event saying whether the run continued the
//! session or started a fresh one, so a rebuild can continue the conversation on the
//! host and in the worktree where it lives.
//!
//! Must not touch: verdicts, jobs or the item's phase.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{events, DbResult};

/// An item's recorded session.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentSession {
    pub agent: String,
    pub session_id: String,
    pub host: String,
    pub worktree: String,
}

/// What a run records of its session.
#[derive(Debug, Clone, Copy)]
pub struct SessionRun<'a> {
    pub agent: &'a str,
    pub session_id: &'a str,
    pub host: &'a str,
    pub worktree: &'a str,
    /// Whether this run continued the session it names.
    pub resumed: bool,
}

pub async fn get(pool: &PgPool, item: i64) -> DbResult<Option<AgentSession>> {
    Ok(sqlx::query_as(
        "select agent, session_id, host, worktree from agent_sessions where item_id = $1",
    )
    .bind(item)
    .fetch_optional(pool)
    .await?)
}

/// Records the session of a run of `claim` and its `agent.session` event, in one
/// transaction; `false` (nothing written) when the claim no longer holds its slot.
pub async fn record(pool: &PgPool, claim: Uuid, item: i64, run: SessionRun<'_>) -> DbResult<bool> {
    let mut tx = pool.begin().await?;
    let project: Option<i64> = sqlx::query_scalar(
        "insert into agent_sessions (item_id, agent, session_id, host, worktree, claim_token)
         select $1, $2, $3, $4, $5, $6
         where exists (select 1 from damascus_slots where claim_token = $6)
         on conflict (item_id) do update
         set agent = excluded.agent, session_id = excluded.session_id, host = excluded.host,
             worktree = excluded.worktree, claim_token = excluded.claim_token,
             updated_at = now()
         returning (select project_id from work_items where id = $1)",
    )
    .bind(item)
    .bind(run.agent)
    .bind(run.session_id)
    .bind(run.host)
    .bind(run.worktree)
    .bind(claim)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(project) = project else {
        return Ok(false);
    };
    events::record(
        &mut tx,
        Some(item),
        Some(project),
        "agent.session",
        &json!({
            "agent": run.agent,
            "session": run.session_id,
            "resumed": run.resumed,
            "host": run.host,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
