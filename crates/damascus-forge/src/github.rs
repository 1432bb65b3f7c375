//! The GitHub forge, REST API v3 with a bearer token.
//!
//! - open: `POST /repos/{owner}/{repo}/pulls`; a 422 "A pull request already exists"
//!   means the branch has one, which is found (`GET …/pulls?head=owner:branch`) and
//!   reused;
//! - merge: `PUT …/pulls/{number}/merge` with `sha` = the tested commit and the merge
//!   method; 405 (not mergeable) is transient, 409 (head moved) means review again;
//! - comment: `POST …/issues/{number}/comments`.
//!
//! Rate limits are respected: an answer with `x-ratelimit-remaining: 0` (or a 429) is a
//! transient error that says when the limit resets.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::rest::{FoundPull, PullsApi};
use crate::{ForgeError, ForgeFuture, MergeOutcome, MergeStyle};

#[derive(Clone)]
pub struct GithubForge {
    http: reqwest::Client,
    /// `https://api.github.com`, or a GitHub Enterprise API root.
    api: String,
    owner: String,
    repo: String,
    token: String,
    style: MergeStyle,
}

impl std::fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubForge")
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
    state: String,
    #[serde(default)]
    merged_at: Option<String>,
    head: ApiRef,
}

impl ApiPull {
    fn found(self) -> FoundPull {
        FoundPull {
            number: self.number,
            url: self.html_url,
            open: self.state == "open",
            merged: self.merged_at.is_some(),
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

impl GithubForge {
    pub fn new(
        api: &str,
        repo: &str,
        token: &str,
        style: MergeStyle,
    ) -> Result<GithubForge, ForgeError> {
        let (owner, name) = repo.split_once('/').ok_or_else(|| {
            ForgeError::Other(format!("forge repository {repo:?} is not owner/name"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("damascus")
            .build()
            .map_err(|e| ForgeError::Other(e.to_string()))?;
        Ok(GithubForge {
            http,
            api: api.trim_end_matches('/').to_owned(),
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
            .unwrap_or("github")
            .to_owned()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), ForgeError> {
        let response = request
            .bearer_auth(&self.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .send()
            .await
            .map_err(|e| ForgeError::Transient(format!("{}: {}", self.host(), e.without_url())))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let exhausted = header("x-ratelimit-remaining").as_deref() == Some("0");
        let reset = header("x-ratelimit-reset");
        let body = response.text().await.unwrap_or_default();
        if status == 429 || (exhausted && status == 403) {
            return Err(ForgeError::Transient(format!(
                "{} rate limit reached; it resets at unix time {}",
                self.host(),
                reset.unwrap_or_else(|| "(unknown)".into())
            )));
        }
        match status {
            401 | 403 => Err(ForgeError::Other(format!(
                "{} refused the token ({status}); check DAMASCUS_GITHUB_TOKEN and its repository permissions",
                self.host()
            ))),
            500..=599 => Err(ForgeError::Transient(format!("{} answered {status}", self.host()))),
            _ => Ok((status, body)),
        }
    }

    async fn find(&self, branch: &str) -> Result<Option<ApiPull>, ForgeError> {
        let head = format!("{}:{branch}", self.owner);
        let (status, body) = self
            .send(
                self.http
                    .get(self.url("/pulls"))
                    .query(&[("state", "all"), ("head", head.as_str())]),
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
        Ok(pulls
            .into_iter()
            .filter(|p| p.head.name == branch)
            .max_by_key(|p| p.number))
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
        if pull.merged_at.is_some() {
            return Ok(MergeOutcome::AlreadyMerged);
        }
        let body = json!({ "sha": expected, "merge_method": self.style.as_str(), "commit_title": message });
        let (status, answer) = self
            .send(
                self.http
                    .put(self.url(&format!("/pulls/{}/merge", pull.number)))
                    .json(&body),
            )
            .await?;
        match status {
            200 => Ok(MergeOutcome::Merged {
                commit: serde_json::from_str::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["sha"].as_str().map(str::to_owned))
                    .unwrap_or_default(),
            }),
            405 => Err(ForgeError::Transient(format!(
                "{} says the pull request is not mergeable yet",
                self.host()
            ))),
            409 => Err(ForgeError::HeadMoved {
                expected: expected.to_owned(),
                actual: self
                    .find(branch)
                    .await?
                    .map(|p| p.head.sha)
                    .unwrap_or_default(),
            }),
            other => Err(ForgeError::Other(format!(
                "{} answered {other} to the merge",
                self.host()
            ))),
        }
    }
}

impl PullsApi for GithubForge {
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
                // GitHub: "A pull request already exists for owner:branch."
                422 if answer.contains("already exists") => Ok(None),
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
                201 => Ok(()),
                status => Err(ForgeError::Other(format!(
                    "{} answered {status} to a comment",
                    self.host()
                ))),
            }
        })
    }
}
