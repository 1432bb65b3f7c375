//! The GitHub client against a server inside the test that answers like GitHub's REST
//! API v3: it checks what it receives (a request without the token, or with another
//! one, is answered 401 "Bad credentials" as GitHub does, and recorded, so each test
//! asserts that none was refused) and plays 401, 404 (a missing repository),
//! 405 (with the PR's `mergeable` and `mergeable_state`), 409, 422 (a PR exists, a
//! branch is missing), 5xx and a spent rate limit. The Gitea client is in `gitea`.

mod gitea;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use damascus_forge::{Forge, ForgeError, GithubForge, MergeOutcome, MergeStyle, PrState};
use serde_json::{json, Value};

/// What a PR read says about merging: `mergeable` (`null`: not computed yet) and
/// `mergeable_state`.
type Mergeability = (Value, &'static str);

#[derive(Clone, Default)]
struct Fake {
    pulls: Arc<Mutex<Vec<(i64, String, bool)>>>,
    /// What reads of a PR say about merging it; `null` and "unknown" when unset.
    mergeability: Arc<Mutex<Option<Mergeability>>>,
    /// Statuses to answer merges with, in order (then 200).
    merge_answers: Arc<Mutex<VecDeque<u16>>>,
    /// A status every request gets (e.g. 401, 503), or 0.
    everything: Arc<Mutex<u16>>,
    rate_limited: Arc<Mutex<bool>>,
    /// GitHub's secondary rate limit: a 403 with `retry-after` and no zero remaining.
    secondary_limited: Arc<Mutex<bool>>,
    /// The message scripted merge answers carry ("scripted" when unset).
    merge_message: Arc<Mutex<Option<String>>>,
    merges: Arc<Mutex<Vec<Value>>>,
    creates: Arc<Mutex<u32>>,
    /// Requests refused for their authentication: the `Authorization` headers sent.
    auth_failures: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// Asserts that every request so far carried the token.
    fn assert_authenticated(&self) {
        assert_eq!(
            *self.auth_failures.lock().unwrap(),
            Vec::<String>::new(),
            "requests the fake refused for their Authorization header"
        );
    }
}

const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

/// Branches GitHub does not have: opening a PR from one is a 422 naming `head`.
const NOT_PUSHED: &str = "damascus/not-pushed";

fn pull_json(fake: &Fake, number: i64, branch: &str, merged: bool) -> Value {
    let (mergeable, state) = fake
        .mergeability
        .lock()
        .unwrap()
        .clone()
        .unwrap_or((Value::Null, "unknown"));
    json!({
        "number": number,
        "html_url": format!("https://github.test/acme/web/pull/{number}"),
        "state": if merged { "closed" } else { "open" },
        "merged_at": if merged { Value::from("2026-11-25T00:00:00Z") } else { Value::Null },
        "head": { "ref": branch, "sha": HEAD },
        "base": { "ref": "main", "sha": "1111111111111111111111111111111111111111" },
        "mergeable": mergeable,
        "mergeable_state": state,
    })
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

type RepoPath = Path<(String, String)>;

fn check(fake: &Fake, headers: &HeaderMap) -> Option<Response> {
    let auth: Vec<String> = headers
        .get_all("authorization")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if auth != ["Bearer ghp_test"] {
        // The token, and only the token; GitHub's answer to anything else.
        fake.auth_failures.lock().unwrap().push(auth.join(", "));
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({
                    "message": "Bad credentials",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "401"
                })),
            )
                .into_response(),
        );
    }
    assert_eq!(headers["accept"], "application/vnd.github+json");
    if *fake.rate_limited.lock().unwrap() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1790000000"),
                ],
                "rate limit",
            )
                .into_response(),
        );
    }
    if *fake.secondary_limited.lock().unwrap() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                [("retry-after", "30")],
                Json(json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."})),
            )
                .into_response(),
        );
    }
    match *fake.everything.lock().unwrap() {
        0 => None,
        status => Some(
            (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"message": "scripted"})),
            )
                .into_response(),
        ),
    }
}

async fn create(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((owner, repo)): RepoPath,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    if (owner.as_str(), repo.as_str()) != ("acme", "web") {
        return not_found();
    }
    assert_eq!(body["base"], "main");
    let branch = body["head"].as_str().unwrap().to_owned();
    if branch == NOT_PUSHED {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}))).into_response();
    }
    *f.creates.lock().unwrap() += 1;
    let mut pulls = f.pulls.lock().unwrap();
    if pulls.iter().any(|(_, b, merged)| *b == branch && !merged) {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"message": "Validation Failed", "errors": [{"message": "A pull request already exists for acme:x."}]}))).into_response();
    }
    let number = pulls.len() as i64 + 1;
    pulls.push((number, branch.clone(), false));
    drop(pulls);
    (
        StatusCode::CREATED,
        Json(pull_json(&f, number, &branch, false)),
    )
        .into_response()
}

async fn list(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((owner, repo)): RepoPath,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    if (owner.as_str(), repo.as_str()) != ("acme", "web") {
        return not_found();
    }
    assert!(
        q.get("base").is_none_or(|b| b == "main"),
        "the base filter names the base: {q:?}"
    );
    let head = q.get("head").cloned().unwrap_or_default();
    let branch = head
        .strip_prefix("acme:")
        .expect("head is owner:branch")
        .to_owned();
    let rows = f.pulls.lock().unwrap().clone();
    let pulls: Vec<Value> = rows
        .iter()
        .filter(|(_, b, _)| *b == branch)
        .map(|(n, b, m)| pull_json(&f, *n, b, *m))
        .collect();
    Json(Value::Array(pulls)).into_response()
}

async fn one(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((_, _, n)): Path<(String, String, i64)>,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    let row = f.pulls.lock().unwrap().iter().find(|p| p.0 == n).cloned();
    match row {
        Some((n, b, m)) => Json(pull_json(&f, n, &b, m)).into_response(),
        None => not_found(),
    }
}

async fn repository(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((owner, repo)): RepoPath,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    if (owner.as_str(), repo.as_str()) != ("acme", "web") {
        return not_found();
    }
    Json(json!({"full_name": "acme/web"})).into_response()
}

async fn merge(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((_, _, n)): Path<(String, String, i64)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    f.merges.lock().unwrap().push(body);
    let scripted = f.merge_answers.lock().unwrap().pop_front();
    let message = f
        .merge_message
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "scripted".into());
    match scripted {
        Some(status) => (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({ "message": message })),
        )
            .into_response(),
        None => {
            f.pulls
                .lock()
                .unwrap()
                .iter_mut()
                .find(|(num, _, _)| *num == n)
                .unwrap()
                .2 = true;
            Json(json!({"sha": "feedface", "merged": true, "message": "Pull Request successfully merged"})).into_response()
        }
    }
}

async fn comment(State(f): State<Fake>, headers: HeaderMap) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    (StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
}

/// Serves the fake; returns its address (`http://127.0.0.1:port`).
async fn serve_at(fake: Fake) -> String {
    let app = Router::new()
        .route("/repos/{owner}/{repo}/pulls", post(create).get(list))
        .route("/repos/{owner}/{repo}/pulls/{n}", get(one))
        .route("/repos/{owner}/{repo}/pulls/{n}/merge", put(merge))
        .route("/repos/{owner}/{repo}/issues/{n}/comments", post(comment))
        .route("/repos/{owner}/{repo}", get(repository))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn github(address: &str, repo: &str) -> GithubForge {
    GithubForge::new(address, repo, "ghp_test", MergeStyle::Squash).unwrap()
}

async fn serve(fake: Fake) -> GithubForge {
    github(&serve_at(fake).await, "acme/web")
}

#[tokio::test]
async fn open_reuse_merge_with_the_tested_sha_and_comment() {
    let fake = Fake::default();
    let forge = serve(fake.clone()).await;
    let pr = forge
        .open_or_find("damascus/web-1", "main", "Title", "Body")
        .await
        .unwrap();
    assert_eq!(pr.url, "https://github.test/acme/web/pull/1");
    // A retried build finds the open PR and never opens a second one.
    let again = forge
        .open_or_find("damascus/web-1", "main", "Title", "Body")
        .await
        .unwrap();
    assert_eq!(again, pr);
    assert_eq!(*fake.creates.lock().unwrap(), 1);
    assert_eq!(
        forge.state("damascus/web-1", "main").await.unwrap(),
        PrState::Open { head: HEAD.into() }
    );
    forge
        .comment("damascus/web-1", "tests passed")
        .await
        .unwrap();

    // 405 first (not mergeable yet: transient), then 409 (the head moved), then merged.
    fake.merge_answers.lock().unwrap().extend([405, 409]);
    assert!(matches!(
        forge.merge("damascus/web-1", "main", HEAD, "m").await,
        Err(ForgeError::Transient(_))
    ));
    assert!(matches!(
        forge.merge("damascus/web-1", "main", HEAD, "m").await,
        Err(ForgeError::HeadMoved { .. })
    ));
    assert_eq!(
        forge
            .merge("damascus/web-1", "main", HEAD, "m")
            .await
            .unwrap(),
        MergeOutcome::Merged {
            commit: "feedface".into()
        }
    );
    for body in fake.merges.lock().unwrap().iter() {
        assert_eq!(body["sha"], HEAD, "the merge names the tested commit");
        assert_eq!(body["merge_method"], "squash");
    }
    // A second merge of a merged PR is a no-op.
    assert_eq!(
        forge
            .merge("damascus/web-1", "main", HEAD, "m")
            .await
            .unwrap(),
        MergeOutcome::AlreadyMerged
    );
    assert_eq!(fake.merges.lock().unwrap().len(), 3);
    assert_eq!(
        forge.state("damascus/web-1", "main").await.unwrap(),
        PrState::Merged { head: HEAD.into() }
    );
    fake.assert_authenticated();
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let fake = Fake::default();
    let forge = serve(fake.clone()).await;
    *fake.everything.lock().unwrap() = 401;
    let err = forge.open_or_find("b", "main", "t", "b").await.unwrap_err();
    assert!(
        err.to_string().contains("refused the token")
            && err.to_string().contains("DAMASCUS_GITHUB_TOKEN"),
        "{err}"
    );
    *fake.everything.lock().unwrap() = 404;
    let err = forge.open_or_find("b", "main", "t", "b").await.unwrap_err();
    assert!(
        !matches!(err, ForgeError::Transient(_)) && err.to_string().contains("404"),
        "{err}"
    );
    *fake.everything.lock().unwrap() = 503;
    assert!(matches!(
        forge.open_or_find("b", "main", "t", "b").await,
        Err(ForgeError::Transient(_))
    ));
    *fake.everything.lock().unwrap() = 0;
    *fake.rate_limited.lock().unwrap() = true;
    // The reset it names (x-ratelimit-reset) is past already: wait a moment, not zero.
    let err = forge.state("b", "main").await.unwrap_err();
    match &err {
        ForgeError::RateLimited { until, detail, .. } => {
            assert!(*until > std::time::SystemTime::now(), "{err}");
            assert!(detail.contains("rate limit is used up"), "{err}");
        }
        other => panic!("not a rate limit: {other:?}"),
    }
    *fake.rate_limited.lock().unwrap() = false;
    assert!(matches!(
        forge.merge("nothing", "main", HEAD, "m").await,
        Err(ForgeError::NotFound(_))
    ));
    assert_eq!(
        forge.state("nothing", "main").await.unwrap(),
        PrState::Closed
    );
    fake.assert_authenticated();
}

#[tokio::test]
async fn a_405_is_a_conflict_only_when_github_says_dirty() {
    for (mergeable, state, conflict) in [
        (json!(false), "dirty", true),
        (Value::Null, "unknown", false),
        (json!(true), "blocked", false),
        (json!(false), "blocked", false),
        (json!(true), "behind", false),
    ] {
        let fake = Fake::default();
        let forge = serve(fake.clone()).await;
        forge
            .open_or_find("damascus/web-1", "main", "t", "b")
            .await
            .unwrap();
        *fake.mergeability.lock().unwrap() = Some((mergeable.clone(), state));
        fake.merge_answers.lock().unwrap().push_back(405);
        let outcome = forge.merge("damascus/web-1", "main", HEAD, "m").await;
        match outcome {
            Err(ForgeError::Conflict { base, detail }) if conflict => {
                assert_eq!(base, "main");
                assert!(
                    detail.contains("#1") && detail.contains("dirty"),
                    "{detail}"
                );
            }
            Err(ForgeError::Transient(reason)) if !conflict => {
                assert!(reason.contains(state), "{reason}");
            }
            other => panic!("{mergeable} {state}: {other:?}"),
        }
        fake.assert_authenticated();
    }
}

#[tokio::test]
async fn a_missing_branch_or_repository_says_which() {
    let fake = Fake::default();
    let address = serve_at(fake.clone()).await;
    let err = github(&address, "acme/web")
        .open_or_find(NOT_PUSHED, "main", "t", "b")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("damascus/not-pushed is missing") && text.contains("was it pushed?"),
        "{text}"
    );
    assert!(!text.contains("no repository"), "{text}");

    let err = github(&address, "acme/nope")
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no repository acme/nope") && text.contains("--forge-repo"),
        "{text}"
    );
    fake.assert_authenticated();
}

#[tokio::test]
async fn credentials_in_the_api_url_never_reach_an_error() {
    let fake = Fake::default();
    *fake.everything.lock().unwrap() = 503;
    let address = serve_at(fake.clone()).await;
    let forge = github(
        &address.replace("http://", "http://user:secret@"),
        "acme/web",
    );
    assert!(!format!("{forge:?}").contains("secret"));
    let err = forge.state("damascus/web-1", "main").await.unwrap_err();
    let host = address.trim_start_matches("http://");
    assert!(
        err.to_string().contains(host) && !err.to_string().contains("secret"),
        "{err}"
    );
    fake.assert_authenticated();
}

/// Refusals a retry cannot change ask a person; limits that pass are waited out until
/// the time GitHub names.
#[tokio::test]
async fn github_refusals_that_last_ask_and_limits_that_pass_are_retried() {
    let fake = Fake::default();
    let forge = serve(fake.clone()).await;
    forge
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap();
    // 405 "Merge commits are not allowed on this repository.": the method is wrong.
    *fake.merge_message.lock().unwrap() =
        Some("Merge commits are not allowed on this repository.".into());
    fake.merge_answers.lock().unwrap().push_back(405);
    match forge.merge("damascus/web-1", "main", HEAD, "m").await {
        Err(ForgeError::Other(text)) => {
            assert!(text.contains("--merge-method"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    // The secondary rate limit is a 403 too, but not a refused token.
    *fake.secondary_limited.lock().unwrap() = true;
    let asked = std::time::SystemTime::now();
    match forge.state("damascus/web-1", "main").await {
        Err(ForgeError::RateLimited { until, detail, .. }) => {
            assert!(detail.contains("secondary rate limit"), "{detail}");
            // retry-after: 30
            let wait = until.duration_since(asked).unwrap();
            assert!(
                wait >= std::time::Duration::from_secs(29)
                    && wait <= std::time::Duration::from_secs(31),
                "{wait:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    fake.assert_authenticated();
}

/// A token GitHub does not know is refused at once, with what to check; retrying cannot
/// change it, so it is not transient.
#[tokio::test]
async fn a_wrong_token_is_a_clear_refusal_not_a_transient_error() {
    let fake = Fake::default();
    let address = serve_at(fake.clone()).await;
    let forge = GithubForge::new(&address, "acme/web", "ghp_revoked", MergeStyle::Squash).unwrap();
    let err = forge
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap_err();
    assert!(!matches!(err, ForgeError::Transient(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused the token") && text.contains("DAMASCUS_GITHUB_TOKEN"),
        "{text}"
    );
    assert!(!text.contains("ghp_revoked"), "{text}");
    assert_eq!(
        *fake.auth_failures.lock().unwrap(),
        ["Bearer ghp_revoked"],
        "one request, refused for its token"
    );
}
