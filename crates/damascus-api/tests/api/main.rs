//! The HTTP API over real HTTP against a real database: auth, every route, every
//! refusal a client can provoke, and the live event stream.

use std::net::SocketAddr;
use std::time::Duration;

use damascus_api::{ApiConfig, AppState};
use damascus_testdb::TestDatabase;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) struct TestApp {
    db: TestDatabase,
    addr: SocketAddr,
    token: String,
    http: reqwest::Client,
    /// The logs directory the server reads item logs from (`<data-dir>/logs`).
    logs_dir: Option<std::path::PathBuf>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(dir) = &self.logs_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl TestApp {
    async fn spawn() -> TestApp {
        TestApp::spawn_with_logs(true).await
    }

    async fn spawn_with_logs(with_logs: bool) -> TestApp {
        let db = TestDatabase::new().await;
        sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git'), ('api', '/srv/api.git')")
            .execute(&db.pool)
            .await
            .unwrap();
        let token = damascus_db::tokens::create(&db.pool, "test")
            .await
            .unwrap()
            .token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let logs_dir = with_logs.then(|| {
            std::env::temp_dir().join(format!(
                "damascus-api-logs-{}-{}",
                std::process::id(),
                addr.port()
            ))
        });
        let state = AppState {
            pool: db.pool.clone(),
            config: ApiConfig::default(),
            logs_dir: logs_dir.clone(),
        };
        tokio::spawn(damascus_api::serve(listener, state, std::future::pending()));
        TestApp {
            db,
            addr,
            token,
            http: reqwest::Client::new(),
            logs_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request to `path` with the test's token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Sends `request`: the status and the JSON body (null when there is none).
    async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        Self::answer(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// A POST without a body, as a button sends it.
    async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(self.request(reqwest::Method::POST, path)).await
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ingest(&self, project: &str, title: &str) -> i64 {
        let (status, body) = self
            .post(
                "/v1/items",
                &json!({"project": project, "title": title, "body": "text"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }
}

mod console;
mod history;
mod project_add;
mod webhooks;

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn every_protected_route_needs_a_valid_token() {
    let app = TestApp::spawn().await;
    let routes = [
        "/v1/items",
        "/v1/items/1",
        "/v1/stats",
        "/v1/human-issues",
        "/v1/events",
        "/v1/openapi.json",
        "/v1/webhooks",
        "/v1/webhooks/chat",
        "/v1/projects",
        "/v1/merge-queue",
        "/v1/items/1/logs",
        "/metrics",
    ];
    for route in routes {
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Bearer dmsc_1_0000"),
            Some("Basic dXNlcjpwYXNz"),
        ] {
            let mut request = app.http.get(app.url(route));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{route} with {auth:?}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(message(&body).contains("damascus token create"));
        }
    }
    let post = app
        .http
        .post(app.url("/v1/items"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    for action in [
        "/v1/items/1/approve",
        "/v1/items/1/cancel",
        "/v1/items/1/retry",
        "/v1/projects/web/pause",
        "/v1/projects/web/resume",
    ] {
        let answer = app.http.post(app.url(action)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{action}");
    }
    let delete = app
        .http
        .delete(app.url("/v1/webhooks/chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::UNAUTHORIZED);
    // A revoked token stops working.
    damascus_db::tokens::revoke(&app.db.pool, "test")
        .await
        .unwrap();
    assert_eq!(app.get("/v1/items").await.0, StatusCode::UNAUTHORIZED);
    // /healthz is public by default.
    let health: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        health["schema_version"],
        damascus_db::migrate::latest_version()
    );
}

#[tokio::test]
async fn ingest_list_group_and_show() {
    let app = TestApp::spawn().await;
    let (status, item) = app
        .post(
            "/v1/items",
            &json!({"project": "web", "title": "Add login", "body": "Users log in."}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(item["phase"], "spec");
    assert_eq!(item["source"], "api");
    assert_eq!(item["attempts"]["max_total"], 10);
    app.ingest("web", "Second").await;
    app.ingest("api", "Third").await;

    let (_, list) = app.get("/v1/items?project=web").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (_, page) = app.get("/v1/items?limit=1&offset=1").await;
    assert_eq!(page["items"][0]["title"], "Second");
    let (_, grouped) = app.get("/v1/items?group_by=project").await;
    let groups = grouped["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[1]["project"], "web");
    assert_eq!(groups[1]["count"], 2);
    assert_eq!(groups[1]["phases"]["spec"], 2);

    let (status, detail) = app.get(&format!("/v1/items/{}", item["id"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["item"]["title"], "Add login");
    assert_eq!(detail["events"][0]["kind"], "item.ingested");
    assert!(detail["human_issues"].as_array().unwrap().is_empty());
    assert!(detail["merge_queue"].is_null(), "not queued before review");

    // One delivery the relay keeps retrying, one it gave up on.
    sqlx::query(
        "with w as (insert into webhooks (name, url, secret) values ('chat', 'http://hooks.example/x', 'whsec_AAAA') returning id)
         insert into webhook_deliveries (webhook_id, event_id, state, attempts, last_error)
         select w.id, e.id, case when e.id = (select min(id) from events_outbox) then 'dead' else 'retrying' end::webhook_delivery_state,
                2, 'hooks.example answered 502'
         from w, (select id from events_outbox order by id limit 2) e",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (_, stats) = app.get("/v1/stats").await;
    assert_eq!(stats["events"]["retrying"], 1);
    assert_eq!(stats["events"]["dead"], 1);
    assert_eq!(stats["webhooks"][0]["name"], "chat");
    assert_eq!(stats["webhooks"][0]["retrying"], 1);
    assert_eq!(stats["webhooks"][0]["dead"], 1);
    assert!(
        stats["webhooks"][0]["oldest_undelivered_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(stats["items_per_phase"]["spec"], 3);
    assert_eq!(stats["items_per_project"]["web"]["spec"], 2);
    assert_eq!(stats["queue"]["queued"], 3);

    let metrics = app
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("damascus_items{phase=\"spec\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("damascus_jobs{state=\"queued\"} 3"),
        "{metrics}"
    );
    for state in ["retrying", "dead"] {
        assert!(
            metrics.contains(&format!(
                "damascus_webhook_backlog{{state=\"{state}\",webhook=\"chat\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("damascus_webhook_oldest_undelivered_seconds{webhook=\"chat\"}"),
        "{metrics}"
    );
    // Requests are timed by their route's pattern, never by the path sent.
    assert!(
        metrics.contains(
            "damascus_http_request_duration_seconds_count{route=\"/v1/stats\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("item_id"), "no item ids in labels");
    damascus_testdb::promtool::check_metrics(&metrics);
    let (status, openapi) = app.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(openapi["openapi"], "3.0.3");
}

#[tokio::test]
async fn an_item_in_review_shows_its_place_in_the_merge_queue() {
    let app = TestApp::spawn().await;
    let first = app.ingest("web", "First").await;
    let second = app.ingest("web", "Second").await;
    for id in [first, second] {
        sqlx::query("update work_items set phase = 'review' where id = $1")
            .bind(id)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
    let (_, detail) = app.get(&format!("/v1/items/{second}")).await;
    let queue = &detail["merge_queue"];
    assert_eq!(queue["repository"], "/srv/web.git");
    assert_eq!(queue["base_branch"], "main");
    assert_eq!(queue["position"], 2);
    assert_eq!(queue["length"], 2);
    assert_eq!(queue["state"], "waiting");
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"merge_queue.entered"), "{kinds:?}");
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_say_what_was_wrong() {
    let app = TestApp::spawn().await;
    let cases: Vec<(StatusCode, Value, &str)> = vec![
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web"}),
            "missing field `title`",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": 5}),
            "invalid type",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": "t", "color": "red"}),
            "unknown field `color`",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "ghost", "title": "t"}),
            "project \"ghost\" not found",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "Bad Name", "title": "t"}),
            "not allowed",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": "  "}),
            "title is empty",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": "t", "depends_on": [999]}),
            "depends_on: work item 999 not found",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": "t", "locks": ["db schema"]}),
            "locks: lock name \"db schema\" is not allowed",
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"project": "web", "title": "t", "locks": "db"}),
            "invalid type",
        ),
    ];
    for (status, body, needle) in cases {
        let (got, answer) = app.post("/v1/items", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(message(&answer).contains(needle), "{body} -> {answer}");
    }
    let (status, body) = app
        .post_raw("/v1/items", "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = app
        .post_raw("/v1/items", "text/plain", b"hello".to_vec())
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        message(&body).contains("Content-Type: application/json"),
        "{body}"
    );
    let huge =
        serde_json::to_vec(&json!({"project": "web", "title": "t", "body": "x".repeat(600_000)}))
            .unwrap();
    let (status, body) = app.post_raw("/v1/items", "application/json", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(message(&body).contains("524288 bytes"), "{body}");

    for (path, status, needle) in [
        (
            "/v1/items/999",
            StatusCode::NOT_FOUND,
            "work item 999 not found",
        ),
        ("/v1/items/abc", StatusCode::BAD_REQUEST, "not an id"),
        ("/v1/items/0", StatusCode::BAD_REQUEST, "not an id"),
        (
            "/v1/items?phase=done",
            StatusCode::BAD_REQUEST,
            "unknown phase \"done\"",
        ),
        (
            "/v1/items?limit=0",
            StatusCode::BAD_REQUEST,
            "between 1 and 500",
        ),
        ("/v1/items?limit=x", StatusCode::BAD_REQUEST, "limit"),
        (
            "/v1/items?project=ghost",
            StatusCode::NOT_FOUND,
            "project \"ghost\" not found",
        ),
        (
            "/v1/items?group_by=color",
            StatusCode::BAD_REQUEST,
            "group_by=project",
        ),
        (
            "/v1/items?colour=red",
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "/v1/human-issues?status=maybe",
            StatusCode::BAD_REQUEST,
            "unknown human issue status",
        ),
        ("/v1/nothing", StatusCode::NOT_FOUND, "openapi.json"),
    ] {
        let (got, body) = app.get(path).await;
        assert_eq!(got, status, "{path} -> {body}");
        assert!(message(&body).contains(needle), "{path} -> {body}");
    }
}

#[tokio::test]
async fn answering_resumes_the_item_once() {
    let app = TestApp::spawn().await;
    let id = app.ingest("web", "Needs a decision").await;
    sqlx::query("update work_items set phase = 'blocked', resume_phase = 'spec' where id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let issue: i64 = sqlx::query_scalar("insert into human_issues (item_id, phase, question) values ($1, 'spec', 'Which DB?') returning id")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let (_, open) = app.get("/v1/human-issues?status=open").await;
    assert_eq!(open["human_issues"][0]["question"], "Which DB?");
    // A question typed into psql resumes where the item left, and says so.
    assert_eq!(open["human_issues"][0]["on_answer"], "spec");
    assert_eq!(
        open["human_issues"][0]["hint"],
        format!("answer with guidance to write the spec again with it; `damascus item retry {id}` re-runs spec as it is; `damascus item cancel {id}` stops it")
    );

    let path = format!("/v1/human-issues/{issue}/answer");
    let (status, body) = app.post(&path, &json!({"answer": " "})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A NUL byte is the client's mistake, not a server failure.
    let (status, body) = app.post(&path, &json!({"answer": "a\u{0}b"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .post(
            &path,
            &json!({"answer": "PostgreSQL", "answered_by": "ana"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resumed_in"], "spec");
    assert_eq!(body["human_issue"]["status"], "answered");
    let (status, body) = app.post(&path, &json!({"answer": "again"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("already answered"));
    let (status, _) = app
        .post("/v1/human-issues/999/answer", &json!({"answer": "x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, item) = app.get(&format!("/v1/items/{id}")).await;
    assert_eq!(item["item"]["phase"], "spec");
}

/// Reads SSE frames until `n` events arrived; returns their ids and kinds.
async fn read_events(response: reqwest::Response, n: usize) -> Vec<(i64, String)> {
    read_events_while(response, |events| events.len() < n).await
}

/// Reads SSE frames until the event `id` arrived; returns every event read.
async fn read_events_until(response: reqwest::Response, id: i64) -> Vec<(i64, String)> {
    read_events_while(response, |events| events.last().is_none_or(|e| e.0 != id)).await
}

async fn read_events_while(
    response: reqwest::Response,
    more: impl Fn(&[(i64, String)]) -> bool,
) -> Vec<(i64, String)> {
    let mut response = response;
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while more(&events) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(cut) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..cut + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            if let (Some(id), Some(kind)) = (field("id:"), field("event:")) {
                events.push((id.parse().unwrap(), kind));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_is_live_and_resumable() {
    let app = TestApp::spawn().await;
    let first = app.ingest("web", "Before the stream").await;
    let stream = app
        .request(reqwest::Method::GET, "/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let live_item = app.ingest("web", "Live one").await;
    let live_event: i64 =
        sqlx::query_scalar("select min(id) from events_outbox where item_id = $1")
            .bind(live_item)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    // A stream starts after the last event every older transaction has settled: an
    // event of a transaction still running elsewhere on the server when it connected
    // (another test's, here) may come first, so the earlier one may be sent too.
    let got = read_events_until(stream, live_event).await;
    assert!(got.len() <= 2, "{got:?}");
    let live = [got.last().unwrap().clone()];
    assert_eq!(live[0].1, "item.ingested");
    // Resuming from the first event replays exactly what came after it.
    let first_event: i64 =
        sqlx::query_scalar("select min(id) from events_outbox where item_id = $1")
            .bind(first)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let resumed = app
        .request(reqwest::Method::GET, "/v1/events")
        .header("last-event-id", first_event.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, 1).await;
    assert_eq!(replayed[0], live[0]);
    let bad = app
        .request(reqwest::Method::GET, "/v1/events")
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// An event whose transaction commits after a later event was written still reaches a
/// reader that is following the stream, before that later event.
#[tokio::test]
async fn an_event_that_commits_late_is_still_streamed() {
    let app = TestApp::spawn().await;
    let stream = app
        .request(reqwest::Method::GET, "/v1/events")
        .send()
        .await
        .unwrap();
    let insert = "insert into events_outbox (kind, payload) values ($1, '{}') returning id";
    let mut slow = app.db.pool.begin().await.unwrap();
    let early: i64 = sqlx::query_scalar(insert)
        .bind("test.early")
        .fetch_one(&mut *slow)
        .await
        .unwrap();
    let later: i64 = sqlx::query_scalar(insert)
        .bind("test.later")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(early < later);
    // The stream polls several times while the early event is still uncommitted.
    tokio::time::sleep(Duration::from_millis(800)).await;
    slow.commit().await.unwrap();
    let got = read_events(stream, 2).await;
    assert_eq!(
        got,
        [
            (early, "test.early".to_owned()),
            (later, "test.later".to_owned())
        ]
    );
}
