//! The GitHub forge, REST API v3 with a bearer token.
//!
//! - find: `GET …/pulls?head=owner:branch&base=…&state=…`: GitHub filters by branch, so
//!   the answer is short whatever the number of PRs; the highest number wins;
//! - open: `POST /repos/{owner}/{repo}/pulls`; a 422 "A pull request already exists"
//!   means the branch has an open one, which is found and reused. A 422 whose `errors`
//!   name the field `head` (or `base`) as `invalid` means that branch is missing on
//!   GitHub; a 404 is asked about with `GET /repos/{owner}/{repo}`, and only a missing
//!   repository is reported as one;
//! - merge: `PUT …/pulls/{number}/merge` with `sha` = the tested commit and the merge
//!   method; the answer's `sha` is the merge commit. 405 reads the PR again: merged
//!   meanwhile is "already merged", `mergeable: false` with `mergeable_state: "dirty"`
//!   is a conflict, "… not allowed on this repository" is a refusal for good (`Other`),
//!   anything else (`mergeable: null` is "not computed yet", `blocked`, `behind`, …) is
//!   transient; 409 (head moved) means review again;
//! - comment: `POST …/issues/{number}/comments`.
//!
//! Rate limits are kept to: an answer with `x-ratelimit-remaining: 0` (or a 429), the
//! secondary rate limit (a 403 with `retry-after`, or one that says so; not a refused
//! token) and a 503 with `retry-after` are `ForgeError::RateLimited` with the time
//! GitHub named (`retry-after`, else `x-ratelimit-reset`, else a minute), for the caller
//! to wait out. Writes of one token go one at a time, a second apart, in this process. User info in the API URL is dropped
//! (the token authenticates), so errors and `Debug` name the host only.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::limits::{LimitHeaders, LimitKey, WritePacer, WriteTurns};
use crate::rest::{self, FoundPull, Listed, PullsApi};
use crate::{ForgeError, ForgeFuture, MergeOutcome, MergeStyle};

/// GitHub's REST best practices: at least a second between writes of one token.
pub const GITHUB_WRITE_GAP: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct GithubForge {
    http: reqwest::Client,
    /// `https://api.github.com`, or a GitHub Enterprise API root, without user info.
    api: String,
    /// `host[:port]`, for messages.
    host: String,
    owner: String,
    repo: String,
    token: String,
    style: MergeStyle,
    limits: LimitKey,
    pacer: WritePacer,
    write_gap: Duration,
    turns: Option<std::sync::Arc<dyn WriteTurns>>,
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
    base: ApiBase,
    /// `null` while GitHub has not computed it yet.
    #[serde(default)]
    mergeable: Option<bool>,
    /// `clean`, `dirty` (conflicts), `blocked`, `behind`, `unstable`, `unknown`, …
    #[serde(default)]
    mergeable_state: Option<String>,
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

#[derive(Debug, Deserialize)]
struct ApiBase {
    #[serde(rename = "ref")]
    name: String,
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
        let address = rest::address_without_credentials(api)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("damascus")
            .build()
            .map_err(|e| ForgeError::Other(e.to_string()))?;
        let host = rest::host_of(&address);
        let limits = LimitKey::new(&host, token);
        Ok(GithubForge {
            http,
            api: address.as_str().trim_end_matches('/').to_owned(),
            pacer: WritePacer::for_key(&limits, GITHUB_WRITE_GAP, None),
            write_gap: GITHUB_WRITE_GAP,
            turns: None,
            limits,
            host,
            owner: owner.to_owned(),
            repo: name.to_owned(),
            token: token.to_owned(),
            style,
        })
    }

    /// Paces this token's writes `gap` apart instead of GitHub's second (a GitHub
    /// Enterprise that allows more, or a test).
    pub fn with_write_gap(mut self, gap: Duration) -> GithubForge {
        self.write_gap = gap;
        self.pacer = WritePacer::for_key(&self.limits, gap, self.turns.clone());
        self
    }

    /// Takes each write's turn from `turns` too, so that every process using this
    /// token keeps the gap between their writes, not only this one.
    pub fn with_write_turns(mut self, turns: std::sync::Arc<dyn WriteTurns>) -> GithubForge {
        self.turns = Some(turns);
        self.pacer = WritePacer::for_key(&self.limits, self.write_gap, self.turns.clone());
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/repos/{}/{}{path}", self.api, self.owner, self.repo)
    }

    fn host(&self) -> &str {
        &self.host
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), ForgeError> {
        let request = request
            .bearer_auth(&self.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .build()
            .map_err(|e| ForgeError::Other(format!("{}: {}", self.host(), e.without_url())))?;
        // GitHub's REST best practices: writes of one token one at a time, a second
        // apart; reads go at once.
        let response = if request.method() == reqwest::Method::GET {
            self.http.execute(request).await
        } else {
            self.pacer.paced(self.http.execute(request)).await
        }
        .map_err(|e| ForgeError::Transient(format!("{}: {}", self.host(), e.without_url())))?;
        let status = response.status().as_u16();
        let limits = LimitHeaders::of(&response);
        let body = rest::read_body(response, self.host()).await?;
        if status == 429 || (limits.exhausted() && status == 403) {
            return Err(limits.rate_limited(self.host(), "its rate limit is used up"));
        }
        // A secondary rate limit is a 403 with retry-after, or one that says so.
        if status == 403
            && (limits.retry_after.is_some()
                || rest::forge_message(&body)
                    .to_lowercase()
                    .contains("secondary rate limit"))
        {
            return Err(limits.rate_limited(self.host(), "its secondary rate limit was hit"));
        }
        match status {
            401 | 403 => Err(ForgeError::Other(format!(
                "{} refused the token ({status}); check DAMASCUS_GITHUB_TOKEN and its repository permissions",
                self.host()
            ))),
            503 if limits.retry_after.is_some() => {
                Err(limits.rate_limited(self.host(), "it answered 503 with retry-after"))
            }
            500..=599 => Err(ForgeError::Transient(format!("{} answered {status}", self.host()))),
            _ => Ok((status, body)),
        }
    }

    /// The newest PR from `branch` (into `base`, when given) among those `listed`.
    async fn find(
        &self,
        branch: &str,
        base: Option<&str>,
        listed: Listed,
    ) -> Result<Option<ApiPull>, ForgeError> {
        let head = format!("{}:{branch}", self.owner);
        let mut query = vec![
            ("state", listed.state()),
            ("head", head.as_str()),
            ("per_page", "100"),
        ];
        if let Some(base) = base {
            query.push(("base", base));
        }
        let (status, body) = self
            .send(self.http.get(self.url("/pulls")).query(&query))
            .await?;
        match status {
            200 => {}
            // The list is missing only when the repository is.
            404 => return Err(self.no_repository()),
            _ => {
                return Err(ForgeError::Other(format!(
                    "{} answered {status} listing pull requests ({})",
                    self.host(),
                    rest::forge_message(&body)
                )))
            }
        }
        let pulls: Vec<ApiPull> = serde_json::from_str(&body)
            .map_err(|e| ForgeError::Other(format!("unexpected pull list: {e}")))?;
        Ok(pulls
            .into_iter()
            .filter(|p| p.head.name == branch)
            .filter(|p| base.is_none_or(|base| p.base.name == base))
            .filter(|p| listed.admits(&p.state))
            .max_by_key(|p| p.number))
    }

    async fn get(&self, number: i64) -> Result<ApiPull, ForgeError> {
        let (status, body) = self
            .send(self.http.get(self.url(&format!("/pulls/{number}"))))
            .await?;
        if status != 200 {
            return Err(ForgeError::Other(format!(
                "{} answered {status} for pull request #{number} ({})",
                self.host(),
                rest::forge_message(&body)
            )));
        }
        serde_json::from_str(&body)
            .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}")))
    }

    fn no_repository(&self) -> ForgeError {
        ForgeError::Other(format!(
            "{} has no repository {}/{} (404), or the token cannot see it; check the project's --forge-repo",
            self.host(),
            self.owner,
            self.repo
        ))
    }

    /// Why opening a PR answered 404: only a missing repository is reported as one.
    async fn explain_not_found(&self, branch: &str, base: &str, answer: &str) -> ForgeError {
        match self.send(self.http.get(self.url(""))).await {
            Ok((404, _)) => self.no_repository(),
            Ok(_) => ForgeError::Other(format!(
                "{} answered 404 opening a pull request from {branch} into {base} in {}/{} ({})",
                self.host(),
                self.owner,
                self.repo,
                rest::forge_message(answer)
            )),
            Err(e) => e,
        }
    }

    /// A 422 to opening a PR that is not "already exists": a missing branch, or a
    /// refusal in GitHub's words.
    fn explain_unprocessable(&self, branch: &str, base: &str, answer: &str) -> ForgeError {
        let value: serde_json::Value = serde_json::from_str(answer).unwrap_or_default();
        let invalid = |field: &str| {
            value["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["field"] == field && e["code"] == "invalid")
        };
        if invalid("head") {
            ForgeError::Other(format!(
                "the branch {branch} is missing on {} {}/{}, so no pull request can be opened from it; was it pushed?",
                self.host(),
                self.owner,
                self.repo
            ))
        } else if invalid("base") {
            ForgeError::Other(format!(
                "the base branch {base} is missing on {} {}/{}; check the project's default branch",
                self.host(),
                self.owner,
                self.repo
            ))
        } else {
            ForgeError::Other(format!(
                "{} refused the pull request from {branch} into {base} (422: {})",
                self.host(),
                rest::forge_message(answer)
            ))
        }
    }

    async fn merge_now(
        &self,
        branch: &str,
        base: &str,
        expected: &str,
        message: &str,
    ) -> Result<MergeOutcome, ForgeError> {
        let pull = self
            .find(branch, Some(base), Listed::All)
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
            405 => self.refused(pull.number, base, &answer).await,
            409 => Err(ForgeError::HeadMoved {
                expected: expected.to_owned(),
                actual: self.get(pull.number).await?.head.sha,
            }),
            other => Err(ForgeError::Other(format!(
                "{} answered {other} to the merge of pull request #{} ({})",
                self.host(),
                pull.number,
                rest::forge_message(&answer)
            ))),
        }
    }

    /// A 405 to a merge: merged meanwhile, a conflict, or not mergeable yet.
    async fn refused(
        &self,
        number: i64,
        base: &str,
        answer: &str,
    ) -> Result<MergeOutcome, ForgeError> {
        let said = rest::forge_message(answer);
        let now = self.get(number).await?;
        if now.merged_at.is_some() {
            return Ok(MergeOutcome::AlreadyMerged);
        }
        let state = now.mergeable_state.as_deref().unwrap_or("unknown");
        if now.mergeable == Some(false) && state == "dirty" {
            return Err(ForgeError::Conflict {
                base: base.to_owned(),
                detail: format!(
                    "{} reports pull request #{number} has conflicts (mergeable_state: dirty; it said: {said}); build the branch again on {base}",
                    self.host()
                ),
            });
        }
        if said.to_lowercase().contains("not allowed") {
            // "Merge commits are not allowed on this repository." and the like.
            return Err(ForgeError::Other(format!(
                "{} will not merge pull request #{number} (405: {said}); set the project's --merge-method to one the repository allows",
                self.host()
            )));
        }
        let mergeable = match now.mergeable {
            Some(mergeable) => mergeable.to_string(),
            None => "not computed yet".into(),
        };
        Err(ForgeError::Transient(format!(
            "{} refused to merge pull request #{number} for now (405: {said}; mergeable: {mergeable}, mergeable_state: {state})",
            self.host()
        )))
    }
}

impl PullsApi for GithubForge {
    fn find_open_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
    ) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move {
            Ok(self
                .find(branch, Some(base), Listed::Open)
                .await?
                .map(ApiPull::found))
        })
    }

    fn find_pull<'a>(
        &'a self,
        branch: &'a str,
        base: Option<&'a str>,
    ) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move {
            Ok(self
                .find(branch, base, Listed::All)
                .await?
                .map(ApiPull::found))
        })
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
                422 => Err(self.explain_unprocessable(branch, base, &answer)),
                404 => Err(self.explain_not_found(branch, base, &answer).await),
                other => Err(ForgeError::Other(format!(
                    "{} answered {other} opening the pull request from {branch} into {base} ({})",
                    self.host(),
                    rest::forge_message(&answer)
                ))),
            }
        })
    }

    fn merge_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        Box::pin(self.merge_now(branch, base, expected_head, message))
    }

    fn limits(&self) -> LimitKey {
        self.limits.clone()
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
