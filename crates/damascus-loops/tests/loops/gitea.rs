//! Ingest → merged through the Gitea client, against a server inside the test that
//! speaks Gitea's API v1 (pull requests, merge with `Do` and `head_commit_id`,
//! comments) over a real bare repository, so the merge is a real commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use damascus_core::{ForgeKind, SpecMode};
use damascus_forge::{Forge, LocalForge};
use damascus_git::{Git, Identity};
use serde_json::{json, Value};

use crate::support::{Setup, CLAUDE_OK, GREETING};

#[derive(Clone)]
struct Pull {
    number: i64,
    head: String,
    base: String,
    merged: bool,
    /// What Gitea reports as `merge_commit_sha` once merged.
    merge_commit: Option<String>,
}

/// One request as the fake forge saw it: method, path, authorization header, body.
type SeenRequest = (String, String, String, Value);

#[derive(Clone)]
pub(crate) struct FakeGitea {
    remote: std::path::PathBuf,
    pulls: Arc<Mutex<Vec<Pull>>>,
    /// Every request: method, path, authorization header, body.
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    /// Merge attempts answered 405 ("not mergeable yet") before one succeeds.
    not_mergeable_first: Arc<Mutex<u32>>,
    /// Requests refused for their authentication: the `Authorization` headers sent.
    auth_failures: Arc<Mutex<Vec<String>>>,
}

impl FakeGitea {
    /// Asserts that every request so far carried the token.
    pub(crate) fn assert_authenticated(&self) {
        assert_eq!(
            *self.auth_failures.lock().unwrap(),
            Vec::<String>::new(),
            "requests the fake refused for their Authorization header"
        );
    }

    fn record(&self, method: &str, path: &str, headers: &HeaderMap, body: Value) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((method.into(), path.into(), auth, body));
    }

    async fn head_of(&self, branch: &str) -> Option<String> {
        Git::new(&self.remote, Identity::default())
            .resolve(&format!("refs/heads/{branch}"))
            .await
            .unwrap()
    }

    async fn json(&self, pull: &Pull) -> Value {
        let sha = self.head_of(&pull.head).await.unwrap_or_default();
        json!({
            "number": pull.number,
            "html_url": format!("http://gitea.test/acme/web/pulls/{}", pull.number),
            "state": if pull.merged { "closed" } else { "open" },
            "merged": pull.merged,
            "merge_commit_sha": pull.merge_commit,
            "mergeable": !pull.merged,
            "head": { "ref": pull.head, "sha": sha },
            "base": { "ref": pull.base },
        })
    }
}

async fn create(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    g.record("POST", "/pulls", &headers, body.clone());
    let head = body["head"].as_str().unwrap_or_default().to_owned();
    if g.head_of(&head).await.is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "head branch not found"})),
        )
            .into_response();
    }
    let existing = g
        .pulls
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.head == head && !p.merged);
    if existing {
        return (
            StatusCode::CONFLICT,
            Json(json!({"message": "pull request already exists for these targets"})),
        )
            .into_response();
    }
    let pull = {
        let mut pulls = g.pulls.lock().unwrap();
        let pull = Pull {
            number: pulls.len() as i64 + 1,
            head,
            base: body["base"].as_str().unwrap_or("main").to_owned(),
            merged: false,
            merge_commit: None,
        };
        pulls.push(pull.clone());
        pull
    };
    (StatusCode::CREATED, Json(g.json(&pull).await)).into_response()
}

async fn list(State(g): State<FakeGitea>, headers: HeaderMap) -> Response {
    g.record("GET", "/pulls", &headers, Value::Null);
    let pulls = g.pulls.lock().unwrap().clone();
    let mut out = Vec::new();
    for pull in pulls.iter().rev() {
        out.push(g.json(pull).await);
    }
    Json(Value::Array(out)).into_response()
}

async fn one(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    Path((_, _, n)): Path<(String, String, i64)>,
) -> Response {
    g.record("GET", "/pulls/n", &headers, Value::Null);
    let pull = g
        .pulls
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.number == n)
        .cloned();
    match pull {
        Some(pull) => Json(g.json(&pull).await).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn merge(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    Path((_, _, n)): Path<(String, String, i64)>,
    Json(body): Json<Value>,
) -> Response {
    g.record("POST", "/merge", &headers, body.clone());
    let Some(pull) = g
        .pulls
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.number == n)
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if pull.merged {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(json!({"message": "The PR is already merged"})),
        )
            .into_response();
    }
    {
        let mut pending = g.not_mergeable_first.lock().unwrap();
        if *pending > 0 {
            *pending -= 1;
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"message": "Please try again later"})),
            )
                .into_response();
        }
    }
    let expected = body["head_commit_id"].as_str().unwrap_or_default();
    if g.head_of(&pull.head).await.as_deref() != Some(expected) {
        return (
            StatusCode::CONFLICT,
            Json(json!({"message": "head out of date"})),
        )
            .into_response();
    }
    // The real merge, in the real bare repository.
    let local = LocalForge::new(&g.remote, Identity::default());
    match local
        .merge(&pull.head, &pull.base, expected, "Merge pull request")
        .await
    {
        Ok(outcome) => {
            let merge_commit = match outcome {
                damascus_forge::MergeOutcome::Merged { commit } => commit,
                damascus_forge::MergeOutcome::AlreadyMerged => String::new(),
            };
            let mut pulls = g.pulls.lock().unwrap();
            let pull = pulls.iter_mut().find(|p| p.number == n).unwrap();
            pull.merged = true;
            pull.merge_commit = Some(merge_commit);
            // Gitea answers a merge with an empty body.
            StatusCode::OK.into_response()
        }
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn comment(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    g.record("POST", "/comments", &headers, body);
    (StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
}

/// Serves the fake with `faults` played on top of its API.
pub(crate) async fn serve_with(g: FakeGitea, faults: crate::faults::Faults) -> String {
    let failures = g.auth_failures.clone();
    let app = Router::new()
        .route("/api/v1/repos/{owner}/{repo}/pulls", post(create).get(list))
        .route("/api/v1/repos/{owner}/{repo}/pulls/{n}", get(one))
        .route("/api/v1/repos/{owner}/{repo}/pulls/{n}/merge", post(merge))
        .route(
            "/api/v1/repos/{owner}/{repo}/issues/{n}/comments",
            post(comment),
        )
        .layer(axum::middleware::from_fn(move |request, next| {
            faults.clone().middleware(request, next)
        }))
        // Gitea answers 401 to a token it does not know, before any route; the fake
        // records it, and each test asserts on what was refused.
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
                    if auth == ["token gitea-secret"] {
                        return next.run(request).await;
                    }
                    failures.lock().unwrap().push(auth.join(", "));
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "user does not exist [uid: 0, name: ]"})),
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

/// A fake Gitea (answering "not mergeable yet" to the first `not_mergeable_first`
/// merges), a project on it (merging with `merge_method` when given), an agent that writes the
/// greeting, and the greeting story ingested: the fake and the item.
async fn greeting_on_fake_gitea(
    setup: &Setup,
    not_mergeable_first: u32,
    merge_method: Option<damascus_core::MergeMethod>,
) -> (FakeGitea, i64) {
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    let gitea = project_on_fake_gitea(setup, &agent, not_mergeable_first, |p| {
        if let Some(method) = merge_method {
            p.merge_method = method;
        }
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    (gitea, item)
}

/// A fake Gitea over the setup's repository, and the project `web` on it.
async fn project_on_fake_gitea(
    setup: &Setup,
    agent: &str,
    not_mergeable_first: u32,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> FakeGitea {
    project_on_faulty_gitea(setup, agent, not_mergeable_first, Default::default(), edit).await
}

/// A fake Gitea over `remote` with `faults` played on top of its API: its URL.
pub(crate) async fn serve_faulty_gitea(
    remote: &std::path::Path,
    faults: crate::faults::Faults,
) -> String {
    let gitea = FakeGitea {
        remote: remote.to_path_buf(),
        pulls: Arc::default(),
        seen: Arc::default(),
        not_mergeable_first: Arc::new(Mutex::new(0)),
        auth_failures: Arc::default(),
    };
    serve_with(gitea, faults).await
}

/// `project_on_fake_gitea` with `faults` played on top of the fake's API.
pub(crate) async fn project_on_faulty_gitea(
    setup: &Setup,
    agent: &str,
    not_mergeable_first: u32,
    faults: crate::faults::Faults,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> FakeGitea {
    let gitea = FakeGitea {
        remote: setup.remote.clone(),
        pulls: Arc::default(),
        seen: Arc::default(),
        not_mergeable_first: Arc::new(Mutex::new(not_mergeable_first)),
        auth_failures: Arc::default(),
    };
    let url = serve_with(gitea.clone(), faults).await;
    setup
        .project(agent, SpecMode::Passthrough, |p| {
            p.forge_kind = ForgeKind::Gitea;
            p.forge_repo = Some("acme/web".into());
            p.forge_url = Some(url.clone());
            edit(p);
        })
        .await;
    gitea
}

/// The merge queue through the Gitea API: a dozen stories that all add a line to
/// CHANGELOG.md, four at a time. Every one merges through `POST .../merge` naming the
/// commit the queue tested (`head_commit_id`), and main was never red.
#[tokio::test]
async fn the_changelog_case_through_the_gitea_api() {
    use crate::merge_queue::{changelog_agent, changelog_case, changelog_setup, CHANGELOG_TEST};
    let setup = changelog_setup().await;
    let agent = changelog_agent(&setup);
    let gitea = project_on_fake_gitea(&setup, &agent, 0, |p| {
        p.test_command = Some(CHANGELOG_TEST.into());
    })
    .await;
    let items = changelog_case(&setup, 12, setup.loops_config(None)).await;
    gitea.assert_authenticated();
    let seen = gitea.seen.lock().unwrap().clone();
    let merges: Vec<&Value> = seen
        .iter()
        .filter(|(_, p, _, _)| p == "/merge")
        .map(|(_, _, _, b)| b)
        .collect();
    assert_eq!(
        merges.len(),
        items.len(),
        "one merge per story, none refused"
    );
    let pulls = gitea.pulls.lock().unwrap().clone();
    assert_eq!(pulls.len(), items.len());
    assert!(pulls.iter().all(|p| p.merged));
    // Each merge named its branch's head at that moment: the commit that was tested.
    let remote = setup.remote_git();
    for body in merges {
        let tested = body["head_commit_id"].as_str().unwrap();
        assert!(
            remote.is_ancestor(tested, "main").await.unwrap(),
            "{tested} is on main"
        );
    }
}

#[tokio::test]
async fn ingest_to_merged_through_the_gitea_api() {
    let setup = Setup::new().await;
    let (gitea, item) =
        greeting_on_fake_gitea(&setup, 1, Some(damascus_core::MergeMethod::Squash)).await;
    // The first merge answer is 405 (not mergeable yet): a transient error, retried.
    for _ in 0..30 {
        setup.cycle().await;
        if setup.phase(item).await == "merged" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(setup.phase(item).await, "merged");
    let retried: i64 =
        sqlx::query_scalar("select count(*) from events_outbox where kind = 'job.retry_scheduled'")
            .fetch_one(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(retried, 1, "the 405 was retried once");

    gitea.assert_authenticated();
    let seen = gitea.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|(m, p, _, _)| m == "POST" && p == "/pulls")
            .count(),
        1,
        "one PR opened"
    );
    let branch = format!("damascus/web-{item}");
    let created = seen
        .iter()
        .find(|(m, p, _, _)| m == "POST" && p == "/pulls")
        .unwrap();
    assert_eq!(created.3["head"], branch.as_str());
    assert_eq!(created.3["base"], "main");
    let merges: Vec<&Value> = seen
        .iter()
        .filter(|(_, p, _, _)| p == "/merge")
        .map(|(_, _, _, b)| b)
        .collect();
    assert_eq!(merges.len(), 2);
    let tested = setup
        .remote_git()
        .resolve(&format!("refs/heads/{branch}"))
        .await
        .unwrap()
        .unwrap();
    for body in merges {
        assert_eq!(body["Do"], "squash", "the project's merge method");
        assert_eq!(body["head_commit_id"], tested.as_str());
    }
    // A real merge commit on main of the real repository, named in the last comment.
    let remote = setup.remote_git();
    let main = remote.resolve("refs/heads/main").await.unwrap().unwrap();
    let last_comment = seen
        .iter()
        .rev()
        .find(|(_, p, _, _)| p == "/comments")
        .map(|(_, _, _, body)| body["body"].as_str().unwrap_or_default().to_owned())
        .expect("verdicts are commented");
    assert!(
        last_comment.contains(&format!("merged as {main}")),
        "{last_comment}"
    );
    assert_eq!(
        remote.run(&["show", "main:hello.txt"]).await.unwrap(),
        "hello"
    );
    assert_eq!(
        remote
            .run(&["rev-list", "--count", "--merges", "main"])
            .await
            .unwrap(),
        "1"
    );
    let pr: String = sqlx::query_scalar("select pr_url from work_items where id = $1")
        .bind(item)
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    assert_eq!(pr, "http://gitea.test/acme/web/pulls/1");
}

#[tokio::test]
async fn a_gitea_project_without_a_token_asks_for_one() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.forge_kind = ForgeKind::Gitea;
            p.forge_repo = Some("acme/web".into());
            p.forge_url = Some("http://127.0.0.1:9".into());
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let mut config = setup.loops_config(None);
    config.gitea_token = None;
    setup.cycle_with(config).await;
    assert_eq!(setup.phase(item).await, "blocked");
    assert!(setup
        .open_question(item)
        .await
        .1
        .contains("DAMASCUS_GITEA_TOKEN"));
}

/// A token Gitea refuses will be refused on every retry: the build asks a person at
/// once (what was refused and how to fix it), instead of retrying until its attempts
/// run out.
#[tokio::test]
async fn a_refused_gitea_token_asks_a_person_at_once() {
    let setup = Setup::new().await;
    let (gitea, item) = greeting_on_fake_gitea(&setup, 0, None).await;
    let mut config = setup.loops_config(None);
    config.gitea_token = Some("revoked-token".into());
    setup.cycle_with(config).await;
    assert_eq!(setup.phase(item).await, "blocked");
    let question = setup.open_question(item).await.1;
    assert!(
        question.contains("cannot open the pull request") && question.contains("refused the token"),
        "{question}"
    );
    assert!(!question.contains("revoked-token"), "{question}");
    let retried: i64 =
        sqlx::query_scalar("select count(*) from events_outbox where kind = 'job.retry_scheduled'")
            .fetch_one(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(retried, 0, "a refusal is not retried");
    assert_eq!(
        *gitea.auth_failures.lock().unwrap(),
        ["token revoked-token"],
        "one request, refused for its token"
    );
    assert!(gitea.pulls.lock().unwrap().is_empty());
    // The agent ran before the forge refused: what it spent is recorded.
    let spent: f64 = sqlx::query_scalar(
        "select coalesce(sum(usd), 0)::float8 from cost_ledger where item_id = $1 and phase = 'build'",
    )
    .bind(item)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!((spent - 0.25).abs() < 1e-9, "{spent}");
}
