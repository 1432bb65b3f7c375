//! The merge queue through the GitHub client, against a server inside the test that
//! speaks GitHub's REST API v3 (pull requests found by `head=owner:branch`, merged with
//! `PUT …/merge` naming the tested `sha`) over a real bare repository, so each merge is
//! a real commit.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use damascus_core::ForgeKind;
use damascus_forge::{Forge, LocalForge};
use damascus_git::{Git, Identity};
use serde_json::{json, Value};

use crate::merge_queue::{changelog_agent, changelog_case, changelog_setup, CHANGELOG_TEST};

/// A branch's head as the fake's pull requests show it, and a newer head it has seen
/// in the repository since (when), shown once it is `lag` old.
type ShownHead = (String, Option<(String, std::time::Instant)>);

#[derive(Clone)]
pub(crate) struct FakeGithub {
    remote: std::path::PathBuf,
    /// How long after a push the pull request's head still names the old commit, as on
    /// GitHub, where a PR's head follows a push by a few seconds.
    lag: std::time::Duration,
    shown: Arc<Mutex<std::collections::HashMap<String, ShownHead>>>,
    /// number, branch, merged
    pulls: Arc<Mutex<Vec<(i64, String, bool)>>>,
    /// Every merge request's body.
    merges: Arc<Mutex<Vec<Value>>>,
    /// Requests refused for their authentication: the `Authorization` headers sent.
    auth_failures: Arc<Mutex<Vec<String>>>,
}

impl FakeGithub {
    pub(crate) fn new(remote: std::path::PathBuf, lag: std::time::Duration) -> FakeGithub {
        FakeGithub {
            remote,
            lag,
            shown: Arc::default(),
            pulls: Arc::default(),
            merges: Arc::default(),
            auth_failures: Arc::default(),
        }
    }

    /// Every merge request's body.
    pub(crate) fn merges(&self) -> Vec<Value> {
        self.merges.lock().unwrap().clone()
    }

    /// The head a pull request of `branch` shows now: the repository's, `lag` late.
    async fn pr_head(&self, branch: &str) -> String {
        let real = self.head_of(branch).await.unwrap_or_default();
        if self.lag.is_zero() {
            return real;
        }
        let mut shown = self.shown.lock().unwrap();
        let entry = shown
            .entry(branch.to_owned())
            .or_insert_with(|| (real.clone(), None));
        if entry.0 != real {
            match &entry.1 {
                Some((sha, since)) if *sha == real && since.elapsed() >= self.lag => {
                    *entry = (real, None);
                }
                Some((sha, _)) if *sha == real => {}
                _ => entry.1 = Some((real, std::time::Instant::now())),
            }
        }
        entry.0.clone()
    }

    async fn head_of(&self, branch: &str) -> Option<String> {
        Git::new(&self.remote, Identity::default())
            .resolve(&format!("refs/heads/{branch}"))
            .await
            .unwrap()
    }

    async fn json(&self, number: i64, branch: &str, merged: bool) -> Value {
        let sha = self.pr_head(branch).await;
        json!({
            "number": number,
            "html_url": format!("https://github.test/acme/web/pull/{number}"),
            "state": if merged { "closed" } else { "open" },
            "merged_at": if merged { Some("2026-12-02T00:00:00Z") } else { None },
            "head": { "ref": branch, "sha": sha },
            "base": { "ref": "main" },
            "mergeable": !merged,
            "mergeable_state": "clean",
        })
    }
}

async fn create(State(g): State<FakeGithub>, Json(body): Json<Value>) -> Response {
    let branch = body["head"].as_str().unwrap_or_default().to_owned();
    if g.head_of(&branch).await.is_none() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed"})),
        )
            .into_response();
    }
    let number = {
        let mut pulls = g.pulls.lock().unwrap();
        if pulls.iter().any(|(_, b, merged)| *b == branch && !merged) {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"message": "Validation Failed", "errors": [{"message": "A pull request already exists for acme:x."}]})),
            )
                .into_response();
        }
        let number = pulls.len() as i64 + 1;
        pulls.push((number, branch.clone(), false));
        number
    };
    (
        StatusCode::CREATED,
        Json(g.json(number, &branch, false).await),
    )
        .into_response()
}

async fn list(
    State(g): State<FakeGithub>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let branch = q
        .get("head")
        .and_then(|h| h.strip_prefix("acme:"))
        .unwrap_or_default()
        .to_owned();
    let rows = g.pulls.lock().unwrap().clone();
    let mut out = Vec::new();
    for (n, b, merged) in rows.iter().filter(|(_, b, _)| *b == branch) {
        out.push(g.json(*n, b, *merged).await);
    }
    Json(Value::Array(out)).into_response()
}

async fn one(
    State(g): State<FakeGithub>,
    Path((_, _, n)): Path<(String, String, i64)>,
) -> Response {
    let row = g.pulls.lock().unwrap().iter().find(|p| p.0 == n).cloned();
    match row {
        Some((n, b, m)) => Json(g.json(n, &b, m).await).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn merge(
    State(g): State<FakeGithub>,
    Path((_, _, n)): Path<(String, String, i64)>,
    Json(body): Json<Value>,
) -> Response {
    g.merges.lock().unwrap().push(body.clone());
    let Some((_, branch, _)) = g.pulls.lock().unwrap().iter().find(|p| p.0 == n).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let sha = body["sha"].as_str().unwrap_or_default();
    // GitHub: 409 when the head is not the `sha` named.
    if g.pr_head(&branch).await != sha {
        return (
            StatusCode::CONFLICT,
            Json(json!({"message": "Head branch was modified. Review and try the merge again."})),
        )
            .into_response();
    }
    let message = body["commit_title"].as_str().unwrap_or("Merge");
    match LocalForge::new(&g.remote, Identity::default())
        .merge(&branch, "main", sha, message)
        .await
    {
        Ok(outcome) => {
            g.pulls
                .lock()
                .unwrap()
                .iter_mut()
                .find(|p| p.0 == n)
                .unwrap()
                .2 = true;
            let sha = match outcome {
                damascus_forge::MergeOutcome::Merged { commit } => commit,
                damascus_forge::MergeOutcome::AlreadyMerged => String::new(),
            };
            Json(json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}))
                .into_response()
        }
        Err(e) => (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn comment() -> Response {
    (StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
}

pub(crate) async fn serve(g: FakeGithub) -> String {
    serve_with(g, crate::faults::Faults::default()).await
}

/// Serves the fake with `faults` played on top of its API.
pub(crate) async fn serve_with(g: FakeGithub, faults: crate::faults::Faults) -> String {
    let failures = g.auth_failures.clone();
    let app = Router::new()
        .route("/repos/{owner}/{repo}/pulls", post(create).get(list))
        .route("/repos/{owner}/{repo}/pulls/{n}", get(one))
        .route("/repos/{owner}/{repo}/pulls/{n}/merge", put(merge))
        .route("/repos/{owner}/{repo}/issues/{n}/comments", post(comment))
        .layer(axum::middleware::from_fn(move |request, next| {
            faults.clone().middleware(request, next)
        }))
        // GitHub answers 401 "Bad credentials" to a token it does not know, before any
        // route; the fake records it, and the test asserts that none was refused.
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let failures = failures.clone();
                async move {
                    let auth: Vec<String> = request
                        .headers()
                        .get_all("authorization")
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    if auth == ["Bearer ghp_test"] {
                        return next.run(request).await;
                    }
                    failures.lock().unwrap().push(auth.join(", "));
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({
                            "message": "Bad credentials",
                            "documentation_url": "https://docs.github.com/rest",
                            "status": "401"
                        })),
                    )
                        .into_response()
                }
            },
        ))
        .with_state(g);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Stories that all add a line to CHANGELOG.md, four at a time, through the GitHub
/// API: every one merges with a `PUT …/merge` that names the commit the queue tested.
#[tokio::test]
async fn the_changelog_case_through_the_github_api() {
    let setup = changelog_setup().await;
    let agent = changelog_agent(&setup);
    let github = FakeGithub::new(setup.remote.clone(), std::time::Duration::ZERO);
    let url = serve(github.clone()).await;
    setup
        .project(&agent, damascus_core::SpecMode::Passthrough, |p| {
            p.forge_kind = ForgeKind::Github;
            p.forge_repo = Some("acme/web".into());
            p.forge_url = Some(url.clone());
            p.test_command = Some(CHANGELOG_TEST.into());
        })
        .await;
    let mut config = setup.loops_config(None);
    config.github_token = Some("ghp_test".into());
    let items = changelog_case(&setup, 8, config).await;
    assert_eq!(
        *github.auth_failures.lock().unwrap(),
        Vec::<String>::new(),
        "every request carried the token"
    );
    let merges = github.merges.lock().unwrap().clone();
    assert_eq!(
        merges.len(),
        items.len(),
        "one merge per story, none refused"
    );
    let remote = setup.remote_git();
    for body in &merges {
        let tested = body["sha"].as_str().unwrap();
        assert!(remote.is_ancestor(tested, "main").await.unwrap());
    }
}
