//! damascus-forge: where pull requests live. The `Forge` trait is what the loops need
//! from GitHub, Gitea or the local forge: open or find the PR for a branch, read its
//! state and head, merge exactly the commit that was tested, comment.
//!
//! Implementations: `LocalForge` (a bare repository), `GiteaForge` (Gitea and
//! Forgejo, REST API v1) and `GithubForge` (REST API v3).
//!
//! Architecture invariant: only this crate talks to a forge. It knows nothing of the
//! database or of phases.

mod gitea;
mod github;
mod limits;
mod local;
mod rest;

use std::future::Future;
use std::pin::Pin;

pub use gitea::{GiteaForge, MergeStyle};
pub use github::{GithubForge, GITHUB_WRITE_GAP};
pub use limits::{LimitKey, WriteTurns};
pub use local::LocalForge;

/// A pull request, as the forge identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The branch it proposes.
    pub branch: String,
    /// Where a person can see it.
    pub url: String,
    /// The commit at its head now.
    pub head: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrState {
    Open {
        head: String,
    },
    /// Merged: `merge_commit` is on the base branch.
    Merged {
        head: String,
    },
    /// The branch is gone without being merged.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    Merged {
        /// The commit the merge put on the base branch, as the forge names it (empty
        /// when a forge names none).
        commit: String,
    },
    /// It was merged before (a second merge is a no-op).
    AlreadyMerged,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The branch moved after the commit was tested; it must be tested again.
    #[error("the branch head is {actual}, not the tested commit {expected}; review again")]
    HeadMoved { expected: String, actual: String },
    /// The base branch holds changes the tested commit lacks (it moved outside the
    /// merge queue, or during the merge): merging now would put an untested tree on it.
    #[error("{base} {detail}; bring the branch up to date with it and test again")]
    BaseMoved { base: String, detail: String },
    #[error("the change conflicts with {base}: {detail}")]
    Conflict { base: String, detail: String },
    #[error("no pull request for branch {0}")]
    NotFound(String),
    /// The forge said to come back at `until` (a rate limit, `retry-after`): nothing
    /// should reach it with this token before then.
    #[error("{host} asked to be left alone until {}: {detail}", httpdate::fmt_http_date(*until))]
    RateLimited {
        host: String,
        until: std::time::SystemTime,
        detail: String,
    },
    /// Worth retrying later (network, a forge that is not ready).
    #[error("the forge is unavailable: {0}")]
    Transient(String),
    #[error("{0}")]
    Other(String),
}

pub type ForgeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ForgeError>> + Send + 'a>>;

pub trait Forge: Send + Sync {
    /// Opens a PR for `branch` into `base`, or returns the one already open for it
    /// (a retried build never opens a second PR).
    fn open_or_find<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest>;
    fn state<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, PrState>;
    /// Merges the PR only if its head is still `expected_head`. The merge queue calls it
    /// with a head that contains the base branch, so the base's tree after the merge is
    /// the head's tree, the one that was tested.
    fn merge<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome>;
    fn comment<'a>(&'a self, branch: &'a str, text: &'a str) -> ForgeFuture<'a, ()>;
    /// Waits (bounded, with backoff) until the open PR of `branch` names `commit` as
    /// its head: a forge may see a push a few seconds after it, and a merge sent before
    /// would be refused as "head modified". `ForgeError::Transient` when it does not
    /// within `within`.
    fn wait_for_head<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        commit: &'a str,
        within: std::time::Duration,
    ) -> ForgeFuture<'a, ()>;
    /// Whom this forge's rate limits apply to (its host and token), so that a deadline
    /// it names can be kept by every process; `None` for a forge without limits.
    fn limit_key(&self) -> Option<LimitKey>;
}
