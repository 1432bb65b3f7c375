//! A project's forge as the phases call it: a deadline the forge set ("come back at
//! T": a rate limit, `retry-after`) is kept by every worker process. Before each call
//! the deadline recorded in the database for the forge's host and token is read, and a
//! call inside it is refused here, without reaching the forge; a call the forge answers
//! with a deadline records it there for everyone.
//!
//! Must not touch: what a call means (the forge's) or the job's schedule (the phase
//! turns `ForgeError::RateLimited` into `Verdict::Deferred`, and the queue waits).

use std::time::Duration;

use damascus_forge::{
    Forge, ForgeError, ForgeFuture, LimitKey, MergeOutcome, PrState, PullRequest, WriteTurns,
};
use sqlx::PgPool;

pub(crate) struct GuardedForge {
    inner: Box<dyn Forge>,
    pool: PgPool,
    key: Option<LimitKey>,
}

impl GuardedForge {
    pub fn new(inner: Box<dyn Forge>, pool: PgPool) -> GuardedForge {
        let key = inner.limit_key();
        GuardedForge { inner, pool, key }
    }

    /// Refuses a call while the forge's deadline is ahead.
    async fn check(&self) -> Result<(), ForgeError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        match damascus_db::forge_waits::active(&self.pool, &key.key).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(ForgeError::RateLimited {
                host: wait.host,
                until: wait.until.into(),
                detail: wait.reason,
            }),
            Err(e) => Err(ForgeError::Transient(format!(
                "cannot read {}'s rate-limit deadline from the database: {e}",
                key.host
            ))),
        }
    }

    /// Records the deadline a forge's answer named, for every process.
    async fn note<T>(&self, result: Result<T, ForgeError>) -> Result<T, ForgeError> {
        if let (Err(ForgeError::RateLimited { until, detail, .. }), Some(key)) =
            (&result, &self.key)
        {
            let until = chrono::DateTime::<chrono::Utc>::from(*until);
            if let Err(e) =
                damascus_db::forge_waits::record(&self.pool, &key.key, &key.host, until, detail)
                    .await
            {
                tracing::warn!(host = %key.host, "cannot record the forge's rate-limit deadline: {e}");
            }
        }
        result
    }
}

impl Forge for GuardedForge {
    fn open_or_find<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest> {
        Box::pin(async move {
            self.check().await?;
            self.note(self.inner.open_or_find(branch, base, title, body).await)
                .await
        })
    }

    fn state<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, PrState> {
        Box::pin(async move {
            self.check().await?;
            self.note(self.inner.state(branch, base).await).await
        })
    }

    fn merge<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        Box::pin(async move {
            self.check().await?;
            self.note(self.inner.merge(branch, base, expected_head, message).await)
                .await
        })
    }

    fn comment<'a>(&'a self, branch: &'a str, text: &'a str) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            self.check().await?;
            self.note(self.inner.comment(branch, text).await).await
        })
    }

    fn wait_for_head<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        commit: &'a str,
        within: Duration,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            self.check().await?;
            self.note(self.inner.wait_for_head(branch, base, commit, within).await)
                .await
        })
    }

    fn limit_key(&self) -> Option<LimitKey> {
        self.key.clone()
    }
}

/// Write turns kept in the database (`forge_write_turns`), shared by every worker
/// process that uses the token.
pub(crate) struct DbWriteTurns {
    pub pool: PgPool,
}

impl WriteTurns for DbWriteTurns {
    fn take<'a>(
        &'a self,
        key: &'a LimitKey,
        gap: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let wait = damascus_db::forge_waits::take_write_turn(&self.pool, &key.key, gap)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(wait).await;
            Ok(())
        })
    }
}
