//! What Gitea and GitHub have in common: a pull request is found by its branch and base,
//! created once, merged by its number, and commented on. `PullsApi` is the small set of
//! calls each forge speaks in its own dialect; the `Forge` behaviour built on it
//! (reuse an open PR, read the state, comment) is written once, here, with the helpers
//! both clients share: the forge's address without credentials, and the forge's own
//! words from an error body.

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
    /// The open pull request from `branch` into `base`. Both forges keep at most one,
    /// so "the open one" is well defined.
    fn find_open_pull<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
    ) -> ForgeFuture<'a, Option<FoundPull>>;
    /// The newest pull request from `branch` (into `base` when given), open or not.
    fn find_pull<'a>(
        &'a self,
        branch: &'a str,
        base: Option<&'a str>,
    ) -> ForgeFuture<'a, Option<FoundPull>>;
    /// Opens one; `None` when the forge says an open one exists already.
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
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome>;
    fn comment_pull<'a>(&'a self, number: i64, text: &'a str) -> ForgeFuture<'a, ()>;
    /// The host and token its limits apply to.
    fn limits(&self) -> crate::LimitKey;
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
            if let Some(existing) = self.find_open_pull(branch, base).await? {
                return Ok(existing.pull_request());
            }
            match self.create_pull(branch, base, title, body).await? {
                Some(created) => Ok(created.pull_request()),
                None => self
                    .find_open_pull(branch, base)
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

    fn state<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, PrState> {
        Box::pin(async move {
            Ok(match self.find_pull(branch, Some(base)).await? {
                Some(p) if p.merged => PrState::Merged { head: p.head_sha },
                Some(p) if p.open => PrState::Open { head: p.head_sha },
                _ => PrState::Closed,
            })
        })
    }

    fn merge<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        self.merge_pull(branch, base, expected_head, message)
    }

    fn comment<'a>(&'a self, branch: &'a str, text: &'a str) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            // A comment names no base: it goes to the branch's newest pull request.
            let pull = self
                .find_pull(branch, None)
                .await?
                .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
            self.comment_pull(pull.number, text).await
        })
    }

    fn wait_for_head<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        commit: &'a str,
        within: std::time::Duration,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + within;
            let mut pause = std::time::Duration::from_millis(100);
            loop {
                let seen = match self.find_pull(branch, Some(base)).await? {
                    Some(pull) if pull.head_sha == commit || pull.merged => return Ok(()),
                    Some(pull) => pull.head_sha,
                    None => return Err(ForgeError::NotFound(branch.to_owned())),
                };
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(ForgeError::Transient(format!(
                        "the pull request of {branch} still names {seen} as its head, not the pushed {commit}, after {} s",
                        within.as_secs()
                    )));
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        })
    }

    fn limit_key(&self) -> Option<crate::LimitKey> {
        Some(self.limits())
    }
}

/// Which pull requests a lookup considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    Open,
    All,
}

impl Listed {
    /// The `state` query parameter both forges take.
    pub fn state(self) -> &'static str {
        match self {
            Listed::Open => "open",
            Listed::All => "all",
        }
    }

    /// Whether a PR in `state` belongs (for servers that ignore the parameter).
    pub fn admits(self, state: &str) -> bool {
        self == Listed::All || state == "open"
    }
}

/// The forge's address as given, without user info: the token authenticates, and a
/// `user:token@` in the URL must never reach an error, a `Debug` line or a log.
pub(crate) fn address_without_credentials(raw: &str) -> Result<reqwest::Url, ForgeError> {
    // The URL itself stays out of these messages: it may hold a token.
    let mut url = reqwest::Url::parse(raw.trim()).map_err(|e| {
        ForgeError::Other(format!(
            "the forge URL is not an absolute URL ({e}); give one like \
             https://gitea.example.com (check the project's --forge-url)"
        ))
    })?;
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(ForgeError::Other(
            "the forge URL names no host; give one like https://gitea.example.com \
             (check the project's --forge-url)"
                .into(),
        ));
    }
    // Both setters fail only for URLs without a host, refused above.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(url)
}

/// `host` or `host:port` of a URL, for error messages.
pub(crate) fn host_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("the forge");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The whole body of an answer from the forge at `host`. A body cut short is the
/// network's doing, not an answer: it is transient, to be tried again.
pub(crate) async fn read_body(
    response: reqwest::Response,
    host: &str,
) -> Result<String, ForgeError> {
    response.text().await.map_err(|e| {
        ForgeError::Transient(format!(
            "{host}: reading the answer failed: {}",
            e.without_url()
        ))
    })
}

/// What the forge said in an error answer: its JSON `message` (GitHub adds `errors`),
/// or the start of the body.
pub(crate) fn forge_message(body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => {
            let mut text = value["message"].as_str().unwrap_or_default().to_owned();
            for error in value["errors"].as_array().into_iter().flatten() {
                if let Some(message) = error["message"].as_str().or(error.as_str()) {
                    text.push_str(if text.is_empty() { "" } else { "; " });
                    text.push_str(message);
                }
            }
            text
        }
        Err(_) => body.trim().to_owned(),
    };
    let text: String = text.chars().take(300).collect();
    if text.is_empty() {
        "no message".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_dropped_and_hosts_keep_their_port() {
        let url =
            address_without_credentials("https://bot:s3cret@gitea.example.com:3000/x").unwrap();
        assert_eq!(url.as_str(), "https://gitea.example.com:3000/x");
        assert_eq!(host_of(&url), "gitea.example.com:3000");
        let err = address_without_credentials("bot:s3cret@gitea.example.com").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(address_without_credentials("gitea.example.com").is_err());
    }

    #[test]
    fn forge_messages() {
        assert_eq!(
            forge_message(r#"{"message":"head out of date"}"#),
            "head out of date"
        );
        assert_eq!(
            forge_message(
                r#"{"message":"Validation Failed","errors":[{"message":"No commits between main and x"}]}"#
            ),
            "Validation Failed; No commits between main and x"
        );
        assert_eq!(forge_message(""), "no message");
        assert_eq!(forge_message("Bad gateway"), "Bad gateway");
    }
}
