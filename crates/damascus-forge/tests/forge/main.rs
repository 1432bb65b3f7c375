//! The GitHub client against a server inside the test that answers like GitHub's REST
//! API v3: it asserts on what it receives and plays 401, 404, 405, 409, 422, 5xx and a
//! spent rate limit. The Gitea client's refusals are in `gitea`.

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

#[derive(Clone, Default)]
struct Fake {
    pulls: Arc<Mutex<Vec<(i64, String, bool)>>>,
    /// Statuses to answer merges with, in order (then 200).
    merge_answers: Arc<Mutex<VecDeque<u16>>>,
    /// A status every request gets (e.g. 401, 503), or 0.
    everything: Arc<Mutex<u16>>,
    rate_limited: Arc<Mutex<bool>>,
    merges: Arc<Mutex<Vec<Value>>>,
    creates: Arc<Mutex<u32>>,
}

const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

fn pull_json(number: i64, branch: &str, merged: bool) -> Value {
    json!({
        "number": number,
        "html_url": format!("https://github.test/acme/web/pull/{number}"),
        "state": if merged { "closed" } else { "open" },
        "merged_at": if merged { Value::from("2026-11-25T00:00:00Z") } else { Value::Null },
        "head": { "ref": branch, "sha": HEAD },
    })
}

fn check(fake: &Fake, headers: &HeaderMap) -> Option<Response> {
    assert_eq!(
        headers["authorization"], "Bearer ghp_test",
        "the token is sent as a bearer token"
    );
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

async fn create(State(f): State<Fake>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    assert_eq!(body["base"], "main");
    let branch = body["head"].as_str().unwrap().to_owned();
    *f.creates.lock().unwrap() += 1;
    let mut pulls = f.pulls.lock().unwrap();
    if pulls.iter().any(|(_, b, merged)| *b == branch && !merged) {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"message": "Validation Failed", "errors": [{"message": "A pull request already exists for acme:x."}]}))).into_response();
    }
    let number = pulls.len() as i64 + 1;
    pulls.push((number, branch.clone(), false));
    (StatusCode::CREATED, Json(pull_json(number, &branch, false))).into_response()
}

async fn list(
    State(f): State<Fake>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = check(&f, &headers) {
        return r;
    }
    let head = q.get("head").cloned().unwrap_or_default();
    let branch = head
        .strip_prefix("acme:")
        .expect("head is owner:branch")
        .to_owned();
    let pulls: Vec<Value> = f
        .pulls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b, _)| *b == branch)
        .map(|(n, b, m)| pull_json(*n, b, *m))
        .collect();
    Json(Value::Array(pulls)).into_response()
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
    match scripted {
        Some(status) => (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"message": "scripted"})),
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

async fn serve(fake: Fake) -> GithubForge {
    let app = Router::new()
        .route("/repos/{owner}/{repo}/pulls", post(create).get(list))
        .route("/repos/{owner}/{repo}/pulls/{n}/merge", put(merge))
        .route("/repos/{owner}/{repo}/issues/{n}/comments", post(comment))
        .route(
            "/repos/{owner}/{repo}",
            get(|| async { StatusCode::NOT_FOUND }),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    GithubForge::new(
        &format!("http://{addr}"),
        "acme/web",
        "ghp_test",
        MergeStyle::Squash,
    )
    .unwrap()
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
    let err = forge.state("b", "main").await.unwrap_err();
    assert!(
        matches!(err, ForgeError::Transient(_)) && err.to_string().contains("1790000000"),
        "{err}"
    );
    *fake.rate_limited.lock().unwrap() = false;
    assert!(matches!(
        forge.merge("nothing", "main", HEAD, "m").await,
        Err(ForgeError::NotFound(_))
    ));
    assert_eq!(
        forge.state("nothing", "main").await.unwrap(),
        PrState::Closed
    );
}
