//! The steps a build finished (`build_steps`): the commit holding the agent's work, the
//! commit pushed, the pull request. A build run records each step under its claim as it
//! finishes it, and a later run of the same build resumes after the last one, so a
//! forge error after the agent ran never runs the agent again. The database forgets
//! them when the agent's output is wanted again (see the `build_steps` migration).
//!
//! Must not touch: verdicts, jobs or the item's phase (a step is not a transition).

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::DbResult;

/// What a build of an item finished so far.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BuildSteps {
    /// The commit holding the agent's work.
    pub committed: String,
    /// The commit pushed to the item's branch (the same, once the push went through).
    pub pushed: Option<String>,
    /// The pull request opened for the branch.
    pub pr_url: Option<String>,
}

/// The steps recorded for `item`, if any.
pub async fn get<'e>(db: impl PgExecutor<'e>, item: i64) -> DbResult<Option<BuildSteps>> {
    Ok(
        sqlx::query_as("select committed, pushed, pr_url from build_steps where item_id = $1")
            .bind(item)
            .fetch_optional(db)
            .await?,
    )
}

/// Records that the agent's work is in `commit`, forgetting any later step of an
/// earlier commit. Fenced on `claim`: `false` (nothing written) when the claim no longer
/// holds its slot.
pub async fn committed<'e>(
    db: impl PgExecutor<'e>,
    claim: Uuid,
    item: i64,
    commit: &str,
) -> DbResult<bool> {
    let written = sqlx::query(
        "insert into build_steps (item_id, committed, claim_token)
         select $1, $2, $3
         where exists (select 1 from damascus_slots where claim_token = $3)
         on conflict (item_id) do update
         set committed = excluded.committed, claim_token = excluded.claim_token,
             pushed = case when build_steps.committed = excluded.committed
                           then build_steps.pushed end,
             pr_url = case when build_steps.committed = excluded.committed
                           then build_steps.pr_url end,
             updated_at = now()",
    )
    .bind(item)
    .bind(commit)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// Records that `commit` (the one recorded as committed) is on the item's branch.
pub async fn pushed<'e>(
    db: impl PgExecutor<'e>,
    claim: Uuid,
    item: i64,
    commit: &str,
) -> DbResult<bool> {
    later_step(
        db,
        "update build_steps set pushed = $2, claim_token = $3, updated_at = now()
         where item_id = $1 and committed = $2
           and exists (select 1 from damascus_slots where claim_token = $3)",
        claim,
        item,
        commit,
    )
    .await
}

/// Records the pull request opened for the pushed commit.
pub async fn pull_request<'e>(
    db: impl PgExecutor<'e>,
    claim: Uuid,
    item: i64,
    pr_url: &str,
) -> DbResult<bool> {
    later_step(
        db,
        "update build_steps set pr_url = $2, claim_token = $3, updated_at = now()
         where item_id = $1 and pushed is not null
           and exists (select 1 from damascus_slots where claim_token = $3)",
        claim,
        item,
        pr_url,
    )
    .await
}

/// A step after the commit: `sql` sets it from `$2` on item `$1`, fenced on claim `$3`.
async fn later_step<'e>(
    db: impl PgExecutor<'e>,
    sql: &'static str,
    claim: Uuid,
    item: i64,
    value: &str,
) -> DbResult<bool> {
    let written = sqlx::query(sql)
        .bind(item)
        .bind(value)
        .bind(claim)
        .execute(db)
        .await?;
    Ok(written.rows_affected() == 1)
}
