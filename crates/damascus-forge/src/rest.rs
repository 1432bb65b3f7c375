//! What Gitea and GitHub have in common: a pull request is found by its branch,
//! created once, merged by its number, and commented on. `PullsApi` is the small set of
//! calls each forge speaks in its own dialect; the `Forge` behaviour built on it
//! (reuse an open PR, read the state, comment) is written once, here.

use crate::{Forge, ForgeError, ForgeFuture, MergeOutcome, PrState, PullRequest};

/// A pull request as a REST forge describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundPull {
    pub number: i64,
    pub url: String,
    pub open: bool,
    pub merged: bool,
    pub head_ref: String,
    pub head_sha: String,
}

impl FoundPull {
    pub fn pull_request(&self) -> PullRequest {
        PullRequest {
            branch: self.head_ref.clone(),
            url: self.url.clone(),
            head: self.head_sha.clone(),
        }
    }
}

pub(crate) trait PullsApi: Send + Sync {
    /// The newest pull request whose head is `branch`.
    fn find_pull<'a>(&'a self, branch: &'a str) -> ForgeFuture<'a, Option<FoundPull>>;
    /// Opens one; `None` when the forge says one exists already.
    fn create_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, Option<FoundPull>>;
    fn merge_pull<'a>(
        &'a self,
        branch: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome>;
    fn comment_pull<'a>(&'a self, number: i64, text: &'a str) -> ForgeFuture<'a, ()>;
}

impl<T: PullsApi> Forge for T {
    fn open_or_find<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest> {
        Box::pin(async move {
            // A retried build finds the PR it opened before and never opens a second.
            if let Some(existing) = self.find_pull(branch).await?.filter(|p| p.open) {
                return Ok(existing.pull_request());
            }
            match self.create_pull(branch, base, title, body).await? {
                Some(created) => Ok(created.pull_request()),
                None => self
                    .find_pull(branch)
                    .await?
                    .map(|p| p.pull_request())
                    .ok_or_else(|| {
                        ForgeError::Transient(
                            "the forge says a pull request exists but lists none".into(),
                        )
                    }),
            }
        })
    }

    fn state<'a>(&'a self, branch: &'a str, _base: &'a str) -> ForgeFuture<'a, PrState> {
        Box::pin(async move {
            Ok(match self.find_pull(branch).await? {
                Some(p) if p.merged => PrState::Merged { head: p.head_sha },
                Some(p) if p.open => PrState::Open { head: p.head_sha },
                _ => PrState::Closed,
            })
        })
    }

    fn merge<'a>(
        &'a self,
        branch: &'a str,
        _base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        self.merge_pull(branch, expected_head, message)
    }

    fn comment<'a>(&'a self, branch: &'a str, text: &'a str) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            let pull = self
                .find_pull(branch)
                .await?
                .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
            self.comment_pull(pull.number, text).await
        })
    }
}
