//! The Gitea client's answers to what a Gitea server can say: 401, 404, 409 on create
//! (reuse the existing PR), 405 and 409 on merge, 5xx. The happy path over a real
//! repository is in damascus-loops' tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use damascus_forge::{Forge, ForgeError, GiteaForge, MergeStyle};
use serde_json::{json, Value};

const HEAD: &str = "89abcdef0123456789abcdef0123456789abcdef";

#[derive(Clone, Default)]
struct Script {
    /// Status for creating a PR (201 when empty).
    create: Arc<Mutex<VecDeque<u16>>>,
    /// Status for merging (200 when empty).
    merge: Arc<Mutex<VecDeque<u16>>>,
    /// The head the server reports after a merge attempt (HEAD when unset).
    head_after_merge: Arc<Mutex<Option<String>>>,
    listed: Arc<Mutex<bool>>,
    creates: Arc<Mutex<u32>>,
}

fn pull(head: &str) -> Value {
    json!({"number": 7, "html_url": "https://gitea.test/acme/web/pulls/7", "state": "open", "merged": false,
           "head": {"ref": "damascus/web-1", "sha": head}})
}

async fn list(State(s): State<Script>, headers: HeaderMap) -> Response {
    assert_eq!(headers["authorization"], "token tea");
    if *s.listed.lock().unwrap() {
        Json(json!([pull(HEAD)])).into_response()
    } else {
        Json(json!([])).into_response()
    }
}

async fn create(State(s): State<Script>, Json(body): Json<Value>) -> Response {
    assert_eq!(body["head"], "damascus/web-1");
    *s.creates.lock().unwrap() += 1;
    let status = s.create.lock().unwrap().pop_front().unwrap_or(201);
    if status == 409 {
        // Gitea: a PR for this head exists already; it lists it from now on.
        *s.listed.lock().unwrap() = true;
    }
    let code = StatusCode::from_u16(status).unwrap();
    if status == 201 {
        *s.listed.lock().unwrap() = true;
        (code, Json(pull(HEAD))).into_response()
    } else {
        (code, Json(json!({"message": "scripted"}))).into_response()
    }
}

async fn one(State(s): State<Script>) -> Response {
    let head = s
        .head_after_merge
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| HEAD.to_owned());
    Json(pull(&head)).into_response()
}

async fn merge(State(s): State<Script>, Json(body): Json<Value>) -> Response {
    assert_eq!(body["Do"], "rebase");
    assert_eq!(body["head_commit_id"], HEAD);
    let status = s.merge.lock().unwrap().pop_front().unwrap_or(200);
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"message": "scripted"})),
    )
        .into_response()
}

async fn serve(script: Script) -> GiteaForge {
    let app = Router::new()
        .route("/api/v1/repos/{o}/{r}/pulls", get(list).post(create))
        .route("/api/v1/repos/{o}/{r}/pulls/{n}", get(one))
        .route("/api/v1/repos/{o}/{r}/pulls/{n}/merge", post(merge))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    GiteaForge::new(
        &format!("http://{addr}"),
        "acme/web",
        "tea",
        MergeStyle::Rebase,
    )
    .unwrap()
}

#[tokio::test]
async fn an_existing_pr_is_reused_never_duplicated() {
    let script = Script::default();
    script.create.lock().unwrap().push_back(409);
    let forge = serve(script.clone()).await;
    let pr = forge
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap();
    assert_eq!(pr.url, "https://gitea.test/acme/web/pulls/7");
    // A retried build finds it before trying to create another.
    forge
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap();
    assert_eq!(*script.creates.lock().unwrap(), 1);
}

#[tokio::test]
async fn refusals_map_to_verdicts() {
    for (status, check) in [
        (401u16, "refused the token"),
        (403, "refused the token"),
        (404, "no repository acme/web"),
        (502, "answered 502"),
    ] {
        let script = Script::default();
        script.create.lock().unwrap().push_back(status);
        let forge = serve(script).await;
        let err = forge
            .open_or_find("damascus/web-1", "main", "t", "b")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(check), "{status}: {err}");
        assert_eq!(
            matches!(err, ForgeError::Transient(_)),
            status >= 500,
            "{status}: {err:?}"
        );
    }

    let script = Script::default();
    let forge = serve(script.clone()).await;
    forge
        .open_or_find("damascus/web-1", "main", "t", "b")
        .await
        .unwrap();
    // 405: not mergeable yet, and not merged meanwhile: try again later.
    script.merge.lock().unwrap().push_back(405);
    assert!(matches!(
        forge.merge("damascus/web-1", "main", HEAD, "m").await,
        Err(ForgeError::Transient(_))
    ));
    // 409 with the head unchanged: a conflict, back to build.
    script.merge.lock().unwrap().push_back(409);
    assert!(matches!(
        forge.merge("damascus/web-1", "main", HEAD, "m").await,
        Err(ForgeError::Conflict { .. })
    ));
    // 409 after the branch moved: review again, never merge untested.
    script.merge.lock().unwrap().push_back(409);
    *script.head_after_merge.lock().unwrap() = Some("f".repeat(40));
    assert!(matches!(
        forge.merge("damascus/web-1", "main", HEAD, "m").await,
        Err(ForgeError::HeadMoved { .. })
    ));
}
