//! The Gitea (and Forgejo) forge, REST API v1 with `Authorization: token …`.
//!
//! - find: `GET …/pulls/{base}/{head}` names the PR from a branch into a base in one
//!   call, whatever the number of PRs. Its answer is taken when it is open: Gitea keeps
//!   at most one open PR per head and base. It is not taken otherwise, because when a
//!   branch has several closed PRs Gitea returns any one of them, and because its 404
//!   means either "no such PR" or, on Gitea releases without the endpoint, "no such
//!   route". Then the list is read page by page (`GET …/pulls?state=…&page=N&limit=50`)
//!   to its end (an empty page, or a page of PRs already seen from a server that ignores
//!   `page`) and the highest-numbered PR of the branch and base wins. Looking for the open
//!   PR reads only `state=open`, which is short; the whole list is read only when the
//!   branch has no open PR (after a merge), or when the base has a `/` (it cannot be one
//!   path segment). A comment names only the branch, so it goes to the PR this client
//!   last found for the branch, or else the newest in the list.
//! - open: `POST /repos/{owner}/{repo}/pulls`; a 409 means an open PR for the branch
//!   exists, which is then found and reused (a retried build never opens a second PR).
//!   A 404 means the repository or a branch is missing: `GET /repos/{owner}/{repo}` and
//!   `GET …/branches/{branch}` find out which, and the error says so.
//! - state: the newest PR of the branch into the base, found as above.
//! - merge: `POST …/pulls/{index}/merge` with `Do` (merge, squash or rebase),
//!   `MergeTitleField` and `head_commit_id` = the tested commit, so Gitea refuses a
//!   branch that moved. Gitea answers 200 with an empty body; the PR is read again and
//!   its `merge_commit_sha` is the merge commit (a server that names none gives an empty
//!   commit and a warning). 405: merged meanwhile is "already merged"; `mergeable: false`
//!   is a conflict, but only when a second read `RECHECK` later still says so, because
//!   Gitea also says `false` while it checks a PR again after its base moved; a message
//!   that the user or the merge style is not allowed is a refusal for good (`Other`, a
//!   person is asked); anything else is transient. 409 is a moved head, a base that
//!   moved while Gitea merged ("out of date": transient), a push a hook rejected
//!   (`Other`), or a conflict.
//! - comment: `POST …/issues/{index}/comments`.
//!
//! The token is sent in a header and never logged. User info in the forge URL
//! (`https://user:token@…`) is dropped, so errors and `Debug` name the host only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::limits::{LimitHeaders, LimitKey};
use crate::rest::{self, FoundPull, Listed, PullsApi};
use crate::{ForgeError, ForgeFuture, MergeOutcome};

/// Gitea's largest page (`MAX_RESPONSE_ITEMS`, 50 by default); a smaller maximum only
/// means more pages.
const PAGE_SIZE: &str = "50";
/// A list longer than this many pages (100,000 PRs) is not a Gitea answer we understand.
const MAX_PAGES: u32 = 2000;
/// How long a merge refused with `mergeable: false` waits before reading the PR again.
const RECHECK: Duration = Duration::from_secs(2);

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
    /// e.g. `https://gitea.example.com/api/v1`, without user info.
    api: String,
    /// `host[:port]`, for messages.
    host: String,
    owner: String,
    repo: String,
    token: String,
    style: MergeStyle,
    /// The PR this client last found for each branch: a comment names no base, and this
    /// spares it a read of the whole list.
    known: Arc<Mutex<HashMap<String, i64>>>,
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
    head: ApiHead,
    base: ApiBase,
    /// False while Gitea checks the PR, on a conflict, or for a work-in-progress PR.
    #[serde(default)]
    mergeable: Option<bool>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

impl ApiPull {
    fn open(&self) -> bool {
        self.state == "open"
    }

    fn is_from(&self, branch: &str, base: Option<&str>) -> bool {
        self.head.name == branch && base.is_none_or(|base| self.base.name == base)
    }

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
struct ApiHead {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

#[derive(Debug, Deserialize)]
struct ApiBase {
    #[serde(rename = "ref")]
    name: String,
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
        let address = rest::address_without_credentials(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ForgeError::Other(e.to_string()))?;
        Ok(GiteaForge {
            http,
            api: format!("{}/api/v1", address.as_str().trim_end_matches('/')),
            host: rest::host_of(&address),
            owner: owner.to_owned(),
            repo: name.to_owned(),
            token: token.to_owned(),
            style,
            known: Arc::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/repos/{}/{}{path}", self.api, self.owner, self.repo)
    }

    /// `…/repos/{owner}/{repo}/{segments…}`, each segment percent-encoded.
    fn url_with_segments<'s>(
        &self,
        segments: impl IntoIterator<Item = &'s str>,
    ) -> Result<reqwest::Url, ForgeError> {
        let mut url = reqwest::Url::parse(&self.url(""))
            .map_err(|e| ForgeError::Other(format!("cannot build a URL for {}: {e}", self.host)))?;
        url.path_segments_mut()
            .map_err(|()| ForgeError::Other(format!("cannot build a URL for {}", self.host)))?
            .extend(segments);
        Ok(url)
    }

    fn host(&self) -> &str {
        &self.host
    }

    fn remember(&self, pull: &ApiPull) {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(pull.head.name.clone(), pull.number);
    }

    fn remembered(&self, branch: &str) -> Option<i64> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(branch)
            .copied()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), ForgeError> {
        let response = request
            .header("authorization", format!("token {}", self.token))
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| ForgeError::Transient(format!("{}: {}", self.host(), e.without_url())))?;
        let status = response.status().as_u16();
        let limits = LimitHeaders::of(&response);
        let body = rest::read_body(response, self.host()).await?;
        match status {
            // Gitea's own limiter, or a proxy in front of it, answers 429; a 503 with
            // Retry-After says when the forge is back.
            429 => Err(limits.rate_limited(self.host(), "it answered 429 Too Many Requests")),
            503 if limits.retry_after.is_some() => {
                Err(limits.rate_limited(self.host(), "it answered 503 with Retry-After"))
            }
            401 | 403 => Err(ForgeError::Other(format!(
                "{} refused the token ({status}); check the project's Gitea token and its repository permissions",
                self.host()
            ))),
            500..=599 => Err(ForgeError::Transient(format!("{} answered {status}", self.host()))),
            _ => Ok((status, body)),
        }
    }

    /// Whether `GET url` finds something (200) or not (404).
    async fn exists(&self, url: reqwest::Url) -> Result<bool, ForgeError> {
        match self.send(self.http.get(url)).await? {
            (200, _) => Ok(true),
            (404, _) => Ok(false),
            (status, body) => Err(ForgeError::Other(format!(
                "{} answered {status} ({})",
                self.host(),
                rest::forge_message(&body)
            ))),
        }
    }

    /// `GET …/pulls/{base}/{branch}`: some PR from the branch into the base, or `None`
    /// for a 404 (no such PR, or a Gitea without the endpoint).
    async fn by_base_head(&self, branch: &str, base: &str) -> Result<Option<ApiPull>, ForgeError> {
        if base.contains('/') {
            return Ok(None);
        }
        let url = self.url_with_segments(["pulls", base].into_iter().chain(branch.split('/')))?;
        match self.send(self.http.get(url)).await? {
            (200, body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}"))),
            (404, _) => Ok(None),
            (status, body) => Err(ForgeError::Other(format!(
                "{} answered {status} looking up the pull request of {branch} ({})",
                self.host(),
                rest::forge_message(&body)
            ))),
        }
    }

    /// Reads the list page by page to its end; the highest-numbered PR of the branch
    /// (into `base`, when given) wins.
    async fn scan(
        &self,
        listed: Listed,
        branch: &str,
        base: Option<&str>,
    ) -> Result<Option<ApiPull>, ForgeError> {
        let mut seen = HashSet::new();
        let mut newest: Option<ApiPull> = None;
        for page in 1..=MAX_PAGES {
            let page = page.to_string();
            let (status, body) = self
                .send(self.http.get(self.url("/pulls")).query(&[
                    ("state", listed.state()),
                    ("page", page.as_str()),
                    ("limit", PAGE_SIZE),
                ]))
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
            let before = seen.len();
            seen.extend(pulls.iter().map(|p| p.number));
            // An empty page is the end; a page of PRs seen before is a server that
            // ignores `page`, which has shown everything on the first.
            if seen.len() == before {
                return Ok(newest);
            }
            let candidates = pulls
                .into_iter()
                .filter(|p| p.is_from(branch, base) && listed.admits(&p.state));
            for pull in candidates {
                if newest.as_ref().is_none_or(|n| pull.number > n.number) {
                    newest = Some(pull);
                }
            }
        }
        Err(ForgeError::Other(format!(
            "{} listed more than {MAX_PAGES} pages of pull requests for {}/{} without an end",
            self.host(),
            self.owner,
            self.repo
        )))
    }

    async fn find_open(&self, branch: &str, base: &str) -> Result<Option<ApiPull>, ForgeError> {
        let found = match self.by_base_head(branch, base).await? {
            Some(pull) if pull.open() => Some(pull),
            _ => self.scan(Listed::Open, branch, Some(base)).await?,
        };
        if let Some(pull) = &found {
            self.remember(pull);
        }
        Ok(found)
    }

    async fn find_newest(
        &self,
        branch: &str,
        base: Option<&str>,
    ) -> Result<Option<ApiPull>, ForgeError> {
        let quick = match base {
            Some(base) => self.by_base_head(branch, base).await?.filter(ApiPull::open),
            None => match self.remembered(branch) {
                Some(number) => self.get(number).await?.filter(|p| p.head.name == branch),
                None => None,
            },
        };
        let found = match quick {
            Some(pull) => Some(pull),
            None => self.scan(Listed::All, branch, base).await?,
        };
        if let Some(pull) = &found {
            self.remember(pull);
        }
        Ok(found)
    }

    /// `GET …/pulls/{number}`; `None` for a 404.
    async fn get(&self, number: i64) -> Result<Option<ApiPull>, ForgeError> {
        let (status, body) = self
            .send(self.http.get(self.url(&format!("/pulls/{number}"))))
            .await?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}"))),
            404 => Ok(None),
            _ => Err(ForgeError::Other(format!(
                "{} answered {status} for pull request #{number} ({})",
                self.host(),
                rest::forge_message(&body)
            ))),
        }
    }

    async fn get_existing(&self, number: i64) -> Result<ApiPull, ForgeError> {
        self.get(number).await?.ok_or_else(|| {
            ForgeError::Other(format!(
                "{} no longer has pull request #{number} in {}/{}",
                self.host(),
                self.owner,
                self.repo
            ))
        })
    }

    fn no_repository(&self) -> ForgeError {
        ForgeError::Other(format!(
            "{} has no repository {}/{} (404), or the token cannot see it; check the project's --forge-repo",
            self.host(),
            self.owner,
            self.repo
        ))
    }

    /// Why opening a PR answered 404: no repository, or no branch to open it from.
    async fn explain_missing(&self, branch: &str, base: &str) -> ForgeError {
        let repository = match self.url_with_segments([]) {
            Ok(url) => self.exists(url).await,
            Err(e) => Err(e),
        };
        match repository {
            Ok(false) => return self.no_repository(),
            Ok(true) => {}
            Err(e) => return e,
        }
        let branch_url = self.url_with_segments(["branches"].into_iter().chain(branch.split('/')));
        let branch_found = match branch_url {
            Ok(url) => self.exists(url).await,
            Err(e) => Err(e),
        };
        match branch_found {
            Ok(false) => ForgeError::Other(format!(
                "the branch {branch} is missing on {} {}/{}, so no pull request can be opened from it; was it pushed?",
                self.host(),
                self.owner,
                self.repo
            )),
            Ok(true) => ForgeError::Other(format!(
                "{} answered 404 opening a pull request from {branch} into {base}; {}/{} has the branch, so check that {base} is a branch there (the project's default branch)",
                self.host(),
                self.owner,
                self.repo
            )),
            Err(e) => e,
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
            .find_newest(branch, Some(base))
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
            "MergeTitleField": message,
        });
        let (status, answer) = self
            .send(
                self.http
                    .post(self.url(&format!("/pulls/{}/merge", pull.number)))
                    .json(&body),
            )
            .await?;
        match status {
            200 | 204 => {
                // The answer is empty; the merged PR names its merge commit.
                let merged = self.get_existing(pull.number).await?;
                let commit = merged.merge_commit_sha.unwrap_or_default();
                if commit.is_empty() {
                    tracing::warn!(
                        host = %self.host(),
                        pull = pull.number,
                        "the forge merged the pull request but names no merge_commit_sha"
                    );
                }
                Ok(MergeOutcome::Merged { commit })
            }
            405 => self.refused(&pull, base, expected, &answer).await,
            409 => {
                let now = self.get_existing(pull.number).await?;
                let said = rest::forge_message(&answer);
                let lower = said.to_lowercase();
                if now.head.sha != expected {
                    Err(ForgeError::HeadMoved {
                        expected: expected.to_owned(),
                        actual: now.head.sha,
                    })
                } else if lower.contains("out of date") {
                    // The base moved while Gitea merged ("merge push out of date").
                    Err(ForgeError::Transient(format!(
                        "{} could not push the merge of pull request #{} because {base} moved meanwhile ({said})",
                        self.host(),
                        pull.number
                    )))
                } else if lower.contains("rejected") {
                    // A hook on the forge refused the push; it will refuse again.
                    Err(ForgeError::Other(format!(
                        "{} rejected the merge of pull request #{} ({said}); check the repository's hooks and branch protection",
                        self.host(),
                        pull.number
                    )))
                } else {
                    Err(ForgeError::Conflict {
                        base: base.to_owned(),
                        detail: said,
                    })
                }
            }
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
        pull: &ApiPull,
        base: &str,
        expected: &str,
        answer: &str,
    ) -> Result<MergeOutcome, ForgeError> {
        let said = rest::forge_message(answer);
        let mut now = self.get_existing(pull.number).await?;
        if now.mergeable == Some(false) && !now.merged {
            // Gitea says false while it checks the PR again (its base moved); only a
            // second false, a moment later, is a conflict.
            tokio::time::sleep(RECHECK).await;
            now = self.get_existing(pull.number).await?;
        }
        if now.merged {
            return Ok(MergeOutcome::AlreadyMerged);
        }
        if now.head.sha != expected {
            return Err(ForgeError::HeadMoved {
                expected: expected.to_owned(),
                actual: now.head.sha,
            });
        }
        if now.mergeable == Some(false) {
            return Err(ForgeError::Conflict {
                base: base.to_owned(),
                detail: format!(
                    "{} cannot merge pull request #{} (mergeable: false; it said: {said}); build the branch again on {base}",
                    self.host(),
                    pull.number
                ),
            });
        }
        if refuses_for_good(&said) {
            return Err(ForgeError::Other(format!(
                "{} will not merge pull request #{} (405: {said}); check the project's --merge-method against the repository's allowed merge styles, and that the token may merge",
                self.host(),
                pull.number
            )));
        }
        Err(ForgeError::Transient(format!(
            "{} refused to merge pull request #{} for now (405: {said})",
            self.host(),
            pull.number
        )))
    }
}

impl PullsApi for GiteaForge {
    fn find_open_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
    ) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move { Ok(self.find_open(branch, base).await?.map(ApiPull::found)) })
    }

    fn find_pull<'a>(
        &'a self,
        branch: &'a str,
        base: Option<&'a str>,
    ) -> ForgeFuture<'a, Option<FoundPull>> {
        Box::pin(async move { Ok(self.find_newest(branch, base).await?.map(ApiPull::found)) })
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
                201 => {
                    let pull = serde_json::from_str::<ApiPull>(&answer)
                        .map_err(|e| ForgeError::Other(format!("unexpected pull request: {e}")))?;
                    self.remember(&pull);
                    Ok(Some(pull.found()))
                }
                // Gitea: an open pull request for this head and base exists already.
                409 => Ok(None),
                404 => Err(self.explain_missing(branch, base).await),
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
        LimitKey::new(&self.host, &self.token)
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

/// Whether a 405's message is a refusal that a retry cannot change: the user may not
/// merge, or the repository does not allow this merge style ("User not allowed to
/// merge PR", "Invalid merge style", "… is not allowed").
fn refuses_for_good(said: &str) -> bool {
    let said = said.to_lowercase();
    said.contains("not allowed") || said.contains("merge style")
}
