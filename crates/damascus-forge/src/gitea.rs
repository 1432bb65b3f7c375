//! The Gitea (and Forgejo) forge, REST API v1 with `Authorization: token …`.
//!
//! - open: `POST /repos/{owner}/{repo}/pulls`; a 409 means a PR for the branch exists,
//!   which is then found and reused (a retried build never opens a second PR);
//! - state: the newest PR whose head is the branch (`GET …/pulls?state=all`);
//! - merge: `POST …/pulls/{index}/merge` with `Do` (merge, squash or rebase) and
//!   `head_commit_id` = the tested commit, so Gitea refuses a branch that moved;
//!   405 (not mergeable yet) is transient, 409 is a conflict or a moved head;
//! - comment: `POST …/issues/{index}/comments`.
//!
//! The token is sent in a header and never logged; errors name the host, not the URL.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::rest::{FoundPull, PullsApi};
use crate::{ForgeError, ForgeFuture, MergeOutcome};

/// How Gitea merges: `Do` in the merge request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStyle {
    Merge,
    Squash,
    Rebase,
}

impl MergeStyle {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MergeStyle::Merge => "merge",
            MergeStyle::Squash => "squash",
            MergeStyle::Rebase => "rebase",
        }
    }
}

#[derive(Clone)]
pub struct GiteaForge {
    http: reqwest::Client,
    /// e.g. `https://gitea.example.com/api/v1`
    api: String,
    owner: String,
    repo: String,
    token: String,
    style: MergeStyle,
}

impl std::fmt::Debug for GiteaForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiteaForge")
            .field("api", &self.api)
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ApiPull {
    number: i64,
    html_url: String,
    #[serde(default)]
    merged: bool,
    state: String,
    head: ApiRef,
}

impl ApiPull {
    fn found(self) -> FoundPull {
        FoundPull {
            number: self.number,
            url: self.html_url,
            open: self.state == "open",
            merged: self.merged,
            head_ref: self.head.name,
            head_sha: self.head.sha,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ApiRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

impl GiteaForge {
    /// `base_url` is the forge's address (`https://gitea.example.com`); `repo` is
    /// `owner/name`.
    pub fn new(
        base_url: &str,
        repo: &str,
        token: &str,
        style: MergeStyle,
    ) -> Result<GiteaForge, ForgeError> {
        let (owner, name) = repo.split_once('/').ok_or_else(|| {
            ForgeError::Other(format!("forge repository {repo:?} is not owner/name"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ForgeError::Other(e.to_string()))?;
        Ok(GiteaForge {
            http,
            api: format!("{}/api/v1", base_url.trim_end_matches('/')),
            owner: owner.to_owned(),
            repo: name.to_owned(),
            token: token.to_owned(),
            style,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/repos/{}/{}{path}", self.api, self.owner, self.repo)
    }

    fn host(&self) -> String {
        self.api
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("gitea")
            .to_owned()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), ForgeError> {
        let response = request
            .header("authorization", format!("token {}", self.token))
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| ForgeError::Transient(format!("{}: {}", self.host(), e.without_url())))?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match status {
            401 | 403 => Err(ForgeError::Other(format!(
                "{} refused the token ({status}); check the project's Gitea token and its repository permissions",
                self.host()
            ))),
            500..=599 | 429 => Err(ForgeError::Transient(format!("{} answered {status}", self.host()))),
            _ => Ok((status, body)),
        }
    }

    async fn find(&self, branch: &str) -> Result<Option<ApiPull>, ForgeError> {
        let (status, body) = self
            .send(
                self.http
                    .get(self.url("/pulls"))
                    .query(&[("state", "all"), ("limit", "50")]),
            )
            .await?;
        if status != 200 {
            return Err(ForgeError::Other(format!(
                "{} answered {status} listing pull requests",
                self.host()
            )));
        }
        let pulls: Vec<ApiPull> = serde_json::from_str(&body)
            .map_err(|e| ForgeError::Other(format!("unexpected pull list: {e}")))?;
        // The newest first: Gitea lists newest first; keep the highest number to be sure.
        Ok(pulls
            .into_iter()
            .filter(|p| p.head.name == branch)
            .max_by_key(|p| p.number))
    }

    async fn get(&self, number: i64) -> Result<ApiPull, ForgeError> {
        let (status, body) = self
            .send(self.http.get(self.url(&format!("/pulls/{number}"))))
            .await?;
        if status != 200 {
            return Err(ForgeError::Other(format!(
                "{} answered {status} for pull request {number}",
                self.host()
            )));
        }
        serde_json::from_str(&body)
            .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}")))
    }

    async fn merge_now(
        &self,
        branch: &str,
        expected: &str,
        message: &str,
    ) -> Result<MergeOutcome, ForgeError> {
        let pull = self
            .find(branch)
            .await?
            .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
        if pull.merged {
            return Ok(MergeOutcome::AlreadyMerged);
        }
        if pull.head.sha != expected {
            return Err(ForgeError::HeadMoved {
                expected: expected.to_owned(),
                actual: pull.head.sha,
            });
        }
        let body = json!({
            "Do": self.style.as_str(),
            "head_commit_id": expected,
            "merge_message_field": message,
        });
        let (status, answer) = self
            .send(
                self.http
                    .post(self.url(&format!("/pulls/{}/merge", pull.number)))
                    .json(&body),
            )
            .await?;
        match status {
            200 | 204 => Ok(MergeOutcome::Merged {
                commit: self
                    .get(pull.number)
                    .await
                    .map(|p| p.head.sha)
                    .unwrap_or_default(),
            }),
            405 => {
                // Either merged meanwhile (a second merge is a no-op) or not mergeable yet.
                if self.get(pull.number).await?.merged {
                    Ok(MergeOutcome::AlreadyMerged)
                } else {
                    Err(ForgeError::Transient(format!(
                        "{} says the pull request is not mergeable yet",
                        self.host()
                    )))
                }
            }
            409 => {
                let now = self.get(pull.number).await?;
                if now.head.sha != expected {
                    Err(ForgeError::HeadMoved {
                        expected: expected.to_owned(),
                        actual: now.head.sha,
                    })
                } else {
                    Err(ForgeError::Conflict {
                        base: "the base branch".into(),
                        detail: answer.chars().take(300).collect(),
                    })
                }
            }
            other => Err(ForgeError::Other(format!(
                "{} answered {other} to the merge",
                self.host()
            ))),
        }
    }
}

impl PullsApi for GiteaForge {
    fn find_pull<'a>(&'a self, branch: &'a str) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move { Ok(self.find(branch).await?.map(|p| p.found())) })
    }

    fn create_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move {
            let request = json!({ "head": branch, "base": base, "title": title, "body": body });
            let (status, answer) = self
                .send(self.http.post(self.url("/pulls")).json(&request))
                .await?;
            match status {
                201 => serde_json::from_str::<ApiPull>(&answer)
                    .map(|p| Some(p.found()))
                    .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}"))),
                // Gitea: a pull request for this head and base exists already.
                409 => Ok(None),
                404 => Err(ForgeError::Other(format!(
                    "{} has no repository {}/{} (404); check the project's --forge-repo",
                    self.host(),
                    self.owner,
                    self.repo
                ))),
                other => Err(ForgeError::Other(format!(
                    "{} answered {other} opening the pull request",
                    self.host()
                ))),
            }
        })
    }

    fn merge_pull<'a>(
        &'a self,
        branch: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        Box::pin(self.merge_now(branch, expected_head, message))
    }

    fn comment_pull<'a>(&'a self, number: i64, text: &'a str) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            let comment = self
                .http
                .post(self.url(&format!("/issues/{number}/comments")))
                .json(&json!({ "body": text }));
            match self.send(comment).await?.0 {
                200 | 201 => Ok(()),
                status => Err(ForgeError::Other(format!(
                    "{} answered {status} to a comment",
                    self.host()
                ))),
            }
        })
    }
}
