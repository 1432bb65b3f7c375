//! What an operator's web console asks: projects with their budgets (never their
//! secrets), the operator's buttons (pause, resume, approve, cancel, retry), an item's
//! live logs, searching and sorting items, the merge queues, and an item's time per
//! phase and cost per model. Every refusal is checked with the message it gives.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{message, TestApp};

async fn sql(app: &TestApp, statement: &str) {
    sqlx::query(statement).execute(&app.db.pool).await.unwrap();
}

/// Asserts a refusal: its status, its code, and words of its message.
fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str, words: &[&str]) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    for word in words {
        assert!(message(&body).contains(word), "{word:?} not in {body}");
    }
}

#[tokio::test]
async fn projects_show_budgets_items_and_settings_but_no_secrets() {
    let app = TestApp::spawn().await;
    sql(
        &app,
        "update projects set
            repository = 'https://x-access-token:ghp_TOPSECRET0123456789@github.com/acme/web.git',
            forge_kind = 'github', forge_repo = 'acme/web', test_command = 'cargo test',
            agent = 'command', agent_command = array['agent', '--api-key', 'sk-live-TOPSECRET2'],
            daily_cost_budget_usd = 5, cost_budget_usd = 1.5
         where name = 'web'",
    )
    .await;
    let first = app.ingest("web", "One").await;
    app.ingest("web", "Two").await;
    sql(
        &app,
        &format!("update work_items set phase = 'cancelled' where id = {first}"),
    )
    .await;
    sql(
        &app,
        &format!(
            "insert into cost_ledger (item_id, phase, attempt, source, model, usd, created_at) values
                ({first}, 'spec', 1, 'llm', 'small', 0.25, now()),
                ({first}, 'spec', 1, 'llm', 'small', 7, now() - interval '2 days')"
        ),
    )
    .await;

    let response = app
        .request(reqwest::Method::GET, "/v1/projects")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("TOPSECRET"), "{text}");
    let projects: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web"]);
    let web = &projects["projects"][1];
    assert_eq!(web["forge"], "github");
    assert_eq!(web["repository"], "https://***@github.com/acme/web.git");
    assert_eq!(web["base_branch"], "main");
    assert_eq!(web["spec_mode"], "refine");
    assert_eq!(web["paused"], false);
    assert_eq!(web["max_attempts_per_phase"], 3);
    assert_eq!(web["max_attempts_total"], 10);
    assert_eq!(
        web["budget"],
        json!({"daily_cap_usd": 5.0, "spent_today_usd": 0.25, "item_cap_usd": 1.5})
    );
    assert_eq!(web["items_per_phase"]["spec"], 1);
    assert_eq!(web["items_per_phase"]["cancelled"], 1);
    assert_eq!(web["items_per_phase"]["merged"], 0);
    let settings = &web["settings"];
    assert_eq!(settings["forge_repo"], "acme/web");
    assert_eq!(settings["test_command"], "cargo test");
    assert_eq!(
        settings["agent_command"],
        json!(["agent", "--api-key", "***"])
    );
    assert_eq!(settings["merge_method"], "merge");
    assert_eq!(settings["require_approval"], false);
    let api = &projects["projects"][0];
    assert_eq!(api["budget"]["daily_cap_usd"], Value::Null);
    assert_eq!(api["budget"]["spent_today_usd"], 0.0);
    assert_eq!(api["settings"]["agent_command"], Value::Null);
}

#[tokio::test]
async fn projects_pause_and_resume() {
    let app = TestApp::spawn().await;
    app.ingest("web", "Queued").await;
    let (status, paused) = app.post_empty("/v1/projects/web/pause").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(
        paused,
        json!({"project": "web", "paused": true, "items": 1})
    );
    let (_, projects) = app.get("/v1/projects").await;
    assert_eq!(projects["projects"][1]["paused"], true);
    let (status, resumed) = app.post("/v1/projects/web/resume", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(
        resumed,
        json!({"project": "web", "paused": false, "items": 1})
    );
    let (_, projects) = app.get("/v1/projects").await;
    assert_eq!(projects["projects"][1]["paused"], false);

    refused(
        app.post_empty("/v1/projects/nope/pause").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["project \"nope\" not found", "damascus project list"],
    );
    refused(
        app.post_empty("/v1/projects/nope/resume").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["project \"nope\" not found"],
    );
    refused(
        app.post_empty("/v1/projects/Not%20A%20Name/pause").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["Not A Name", "GET /v1/projects"],
    );
    refused(
        app.post_empty("/v1/projects/a%00b/resume").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["GET /v1/projects"],
    );
    refused(
        app.post("/v1/projects/web/pause", &json!({"now": true}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        &["unknown field `now`"],
    );
    refused(
        app.post_raw("/v1/projects/web/pause", "text/plain", b"pause".to_vec())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &["application/json"],
    );
    refused(
        app.post_raw("/v1/projects/web/pause", "application/json", b"{".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["EOF"],
    );
}

#[tokio::test]
async fn items_are_approved_cancelled_and_retried_or_refused_with_their_state() {
    let app = TestApp::spawn().await;
    sql(
        &app,
        "insert into projects (name, repository, require_approval) values ('gated', '/srv/gated.git', true)",
    )
    .await;
    let gated = app.ingest("gated", "Needs a yes").await;
    let (status, approved) = app
        .post(&format!("/v1/items/{gated}/approve"), &json!({"by": "ana"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["item"]["id"], gated);
    let (_, detail) = app.get(&format!("/v1/items/{gated}")).await;
    assert_eq!(approved["item"], detail["item"], "the same Item JSON");
    assert_eq!(detail["gates"][0]["opened_by"], "ana");
    refused(
        app.post_empty(&format!("/v1/items/{gated}/approve")).await,
        StatusCode::CONFLICT,
        "conflict",
        &["(in spec) was already approved by ana"],
    );

    let plain = app.ingest("web", "No gate").await;
    refused(
        app.post_empty(&format!("/v1/items/{plain}/approve")).await,
        StatusCode::CONFLICT,
        "conflict",
        &["(in spec) waits for no approval", "--require-approval"],
    );
    refused(
        app.post_empty(&format!("/v1/items/{plain}/retry")).await,
        StatusCode::CONFLICT,
        "conflict",
        &["is spec, not blocked", "only blocked items", "cancel it"],
    );

    // A blocked item goes back into the phase it left, with a fresh budget.
    sql(
        &app,
        &format!(
            "update work_items set phase = 'blocked', resume_phase = 'build', attempts_total = 4 where id = {plain}"
        ),
    )
    .await;
    let (status, retried) = app
        .post(&format!("/v1/items/{plain}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["item"]["phase"], "build");
    assert_eq!(retried["item"]["attempts"]["total"], 0);

    let (status, cancelled) = app.post_empty(&format!("/v1/items/{plain}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["item"]["phase"], "cancelled");
    let (_, detail) = app.get(&format!("/v1/items/{plain}")).await;
    let last = detail["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "item.cancelled");
    assert_eq!(last["payload"]["by"], "api");
    refused(
        app.post_empty(&format!("/v1/items/{plain}/cancel")).await,
        StatusCode::CONFLICT,
        "conflict",
        &["already cancelled", "nothing to cancel"],
    );
    refused(
        app.post_empty(&format!("/v1/items/{plain}/retry")).await,
        StatusCode::CONFLICT,
        "conflict",
        &[
            "is cancelled, not blocked",
            "ingest the story as a new item",
        ],
    );
    refused(
        app.post_empty(&format!("/v1/items/{plain}/approve")).await,
        StatusCode::CONFLICT,
        "conflict",
        &["is cancelled, so there is nothing to approve"],
    );

    for action in ["approve", "cancel", "retry"] {
        refused(
            app.post_empty(&format!("/v1/items/999/{action}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
            &["work item 999 not found"],
        );
        refused(
            app.post_empty(&format!("/v1/items/abc/{action}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &["\"abc\" is not an id"],
        );
        refused(
            app.post(&format!("/v1/items/{gated}/{action}"), &json!({"by": " "}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            &["by: is empty"],
        );
        refused(
            app.post(
                &format!("/v1/items/{gated}/{action}"),
                &json!({"by": "x".repeat(101)}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            &["by: must be at most 100 characters"],
        );
        refused(
            app.post(
                &format!("/v1/items/{gated}/{action}"),
                &json!({"who": "ana"}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            &["unknown field `who`"],
        );
        refused(
            app.post(&format!("/v1/items/{gated}/{action}"), &json!({"by": 5}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            &["invalid type"],
        );
    }
}

/// Reads the SSE response until its text holds `needle`.
async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let read = async {
        while !seen.contains(needle) {
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        panic!("{needle:?} never came; the stream sent: {seen}");
    }
}

#[tokio::test]
async fn an_items_logs_stream_what_is_there_then_what_is_appended() {
    let app = TestApp::spawn().await;
    let id = app.ingest("web", "Logged").await;
    let quiet = app.ingest("web", "Quiet").await;
    let dir = app.logs_dir.as_ref().unwrap().join(id.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("spec.log"), "refining the spec\n").unwrap();

    let mut stream = app
        .request(reqwest::Method::GET, &format!("/v1/items/{id}/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "refining the spec").await;
    assert!(
        seen.contains(r#"event: log"#)
            && seen.contains(r#"data: {"file":"spec.log","text":"refining the spec\n"}"#),
        "{seen}"
    );
    // Written while the client reads: appended to a file, and a new file.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("spec.log"))
        .unwrap();
    std::io::Write::write_all(&mut file, "second line \u{e9}\n".as_bytes()).unwrap();
    read_until(&mut stream, &mut seen, "second line \u{e9}").await;
    std::fs::write(dir.join("build.log"), "compiling\n").unwrap();
    read_until(
        &mut stream,
        &mut seen,
        r#"{"file":"build.log","text":"compiling\n"}"#,
    )
    .await;
    assert_eq!(
        seen.matches("refining the spec").count(),
        1,
        "sent once: {seen}"
    );

    // An item without output yet: the stream waits for its first line.
    let mut waiting = app
        .request(reqwest::Method::GET, &format!("/v1/items/{quiet}/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), StatusCode::OK);
    let quiet_dir = app.logs_dir.as_ref().unwrap().join(quiet.to_string());
    std::fs::create_dir_all(&quiet_dir).unwrap();
    std::fs::write(quiet_dir.join("build.log"), "at last\n").unwrap();
    let mut seen = String::new();
    read_until(&mut waiting, &mut seen, "at last").await;

    refused(
        app.get("/v1/items/999/logs").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["work item 999 not found"],
    );
    refused(
        app.get("/v1/items/x/logs").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["\"x\" is not an id"],
    );
    let without = TestApp::spawn_with_logs(false).await;
    let item = without.ingest("web", "Elsewhere").await;
    refused(
        without.get(&format!("/v1/items/{item}/logs")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["without a data directory", "damascus logs ID"],
    );
}

fn titles(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn items_are_searched_and_sorted_with_a_total() {
    let app = TestApp::spawn().await;
    for title in [
        "Add login",
        "50% off banner",
        "under_score",
        "Plain",
        "Back\\slash",
    ] {
        app.ingest("web", title).await;
    }
    sql(
        &app,
        "update work_items set body = 'Users LOG IN here' where title = 'Plain'",
    )
    .await;
    sql(&app, "update work_items set cost_usd = id * 10 % 7").await;

    let (_, page) = app.get("/v1/items?q=LOGIN").await;
    assert_eq!(titles(&page), ["Add login"]);
    assert_eq!(page["total"], 1);
    let (_, page) = app.get("/v1/items?q=log%20in").await;
    assert_eq!(titles(&page), ["Plain"], "the body is searched too");
    let (_, page) = app.get("/v1/items?q=%25").await;
    assert_eq!(titles(&page), ["50% off banner"], "% is a character");
    let (_, page) = app.get("/v1/items?q=_").await;
    assert_eq!(titles(&page), ["under_score"], "_ is a character");
    let (_, page) = app.get("/v1/items?q=%5C").await;
    assert_eq!(titles(&page), ["Back\\slash"], "\\ is a character");
    let (_, page) = app.get("/v1/items?q=").await;
    assert_eq!(page["total"], 5, "an empty q matches everything");

    let (_, page) = app.get("/v1/items?sort=-id&limit=2").await;
    assert_eq!(titles(&page), ["Back\\slash", "Plain"]);
    assert_eq!(
        (page["total"].as_i64(), page["limit"].as_i64()),
        (Some(5), Some(2))
    );
    let (_, page) = app.get("/v1/items?sort=id&limit=2&offset=4").await;
    assert_eq!(titles(&page), ["Back\\slash"]);
    let (_, page) = app.get("/v1/items").await;
    assert_eq!(titles(&page)[0], "Add login", "oldest first by default");
    let costs = |page: &Value| -> Vec<f64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["cost_usd"].as_f64().unwrap())
            .collect()
    };
    let (_, page) = app.get("/v1/items?sort=cost").await;
    let mut sorted = costs(&page);
    sorted.sort_by(f64::total_cmp);
    assert_eq!(costs(&page), sorted);
    let (_, page) = app.get("/v1/items?sort=-cost").await;
    sorted.reverse();
    assert_eq!(costs(&page), sorted);
    sql(
        &app,
        "update work_items set title = title where title = 'Plain'",
    )
    .await;
    let (_, page) = app.get("/v1/items?sort=-updated&limit=1").await;
    assert_eq!(titles(&page), ["Plain"], "changed last");
    let (_, page) = app.get("/v1/items?sort=updated").await;
    assert_eq!(titles(&page).last(), Some(&"Plain"));
    let (_, grouped) = app.get("/v1/items?group_by=project&q=login").await;
    assert_eq!(grouped["total"], 1);

    refused(
        app.get("/v1/items?sort=title").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["sort \"title\"", "id, -id, updated, -updated, cost, -cost"],
    );
    refused(
        app.get(&format!("/v1/items?q={}", "a".repeat(201))).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["q is longer than 200 characters"],
    );
    refused(
        app.get("/v1/items?q=a%00b").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        &["NUL"],
    );
}

#[tokio::test]
async fn ten_thousand_items_are_searched_sorted_and_paged_on_the_server() {
    let app = TestApp::spawn().await;
    sql(
        &app,
        "insert into work_items (project_id, title, body, phase, max_attempts_per_phase,
            max_attempts_total, source, cost_usd)
         select (select id from projects where name = 'web'), 'Bulk item ' || g,
            case when g % 100 = 0 then 'has the Needle' else 'hay' end, 'merged', 3, 10, 'test',
            (g % 97)::numeric
         from generate_series(1, 10000) g",
    )
    .await;
    let started = Instant::now();
    let (status, page) = app
        .get("/v1/items?q=needle&sort=-cost&limit=50&offset=50")
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 100);
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    let (_, page) = app.get("/v1/items?sort=-updated&limit=500").await;
    assert_eq!(page["total"], 10_000);
    assert_eq!(page["items"].as_array().unwrap().len(), 500);
    eprintln!("search, sort and count over 10,000 items took {took:?}");
    // A generous bound: a plan that reads every item per row would take minutes.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn the_merge_queues_list_their_entries_in_order() {
    let app = TestApp::spawn().await;
    let (_, empty) = app.get("/v1/merge-queue").await;
    assert_eq!(empty, json!({"queues": []}));
    let first = app.ingest("web", "First").await;
    let second = app.ingest("web", "Second").await;
    let other = app.ingest("api", "Other").await;
    for id in [first, second, other] {
        sql(
            &app,
            &format!("update work_items set phase = 'review' where id = {id}"),
        )
        .await;
    }
    let (status, queues) = app.get("/v1/merge-queue").await;
    assert_eq!(status, StatusCode::OK, "{queues}");
    let queues = queues["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2, "{queues:?}");
    assert_eq!(queues[0]["repository"], "/srv/api.git");
    assert_eq!(queues[0]["entries"][0]["item_id"], other);
    let web = &queues[1];
    assert_eq!(web["repository"], "/srv/web.git");
    assert_eq!(web["base_branch"], "main");
    let entries = web["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["item_id"], first);
    assert_eq!(entries[0]["title"], "First");
    assert_eq!(entries[0]["position"], 1);
    assert_eq!(entries[1]["item_id"], second);
    assert_eq!(entries[1]["position"], 2);
    assert_eq!(entries[1]["state"], "waiting");
    assert!(entries[1]["since"].is_string());
    assert!(entries[1]["batch_head"].is_null());
}

#[tokio::test]
async fn an_item_shows_its_time_per_phase_budget_and_cost_per_model() {
    let app = TestApp::spawn().await;
    sql(
        &app,
        "update projects set cost_budget_usd = 2.5, max_attempts_per_phase = 4 where name = 'web'",
    )
    .await;
    let id = app.ingest("web", "Timed").await;
    let (_, detail) = app.get(&format!("/v1/items/{id}")).await;
    let phases = detail["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{phases:?}");
    assert_eq!(phases[0]["phase"], "spec");
    assert_eq!(phases[0]["entered_at"], detail["item"]["created_at"]);
    assert!(phases[0]["left_at"].is_null());
    assert!(phases[0]["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        detail["budget"],
        json!({"max_attempts_per_phase": 4, "max_attempts_total": 10, "cost_budget_usd": 2.5})
    );
    assert_eq!(detail["costs_per_model"], json!([]));

    sql(
        &app,
        &format!(
            "insert into cost_ledger (item_id, phase, attempt, source, model, tokens_in, tokens_out, tokens_cached, price, usd) values
                ({id}, 'spec', 1, 'llm', 'small', 100, 10, 0, null, 0.5),
                ({id}, 'build', 1, 'agent', 'big', 1000, 200, 400, 'big at 1/0.1/5 USD per Mtok (in/cached/out; data/prices.toml)', 2),
                ({id}, 'build', 2, 'llm', 'small', 50, 5, 0, null, 0.25)"
        ),
    )
    .await;
    let (status, _) = app.post_empty(&format!("/v1/items/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, detail) = app.get(&format!("/v1/items/{id}")).await;
    let phases = detail["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{phases:?}");
    assert_eq!(phases[0]["phase"], "spec");
    assert_eq!(phases[0]["left_at"], phases[1]["entered_at"]);
    assert_eq!(phases[1]["phase"], "cancelled");
    assert!(phases[1]["left_at"].is_null());
    assert_eq!(
        detail["costs_per_model"],
        json!([
            {"model": "big", "usd": 2.0, "input_tokens": 1000, "output_tokens": 200,
             "cached_tokens": 400,
             "prices": ["big at 1/0.1/5 USD per Mtok (in/cached/out; data/prices.toml)"]},
            {"model": "small", "usd": 0.75, "input_tokens": 150, "output_tokens": 15,
             "cached_tokens": 0, "prices": []},
        ])
    );
    let build = detail["costs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "big")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            &build["tokens_cached"],
            build["price"].as_str().map(|p| p.starts_with("big at"))
        ),
        (&json!(400), Some(true))
    );
}

#[tokio::test]
async fn the_openapi_document_names_every_console_route() {
    let app = TestApp::spawn().await;
    let (_, openapi) = app.get("/v1/openapi.json").await;
    for (path, method) in [
        ("/v1/projects", "get"),
        ("/v1/projects/{name}/pause", "post"),
        ("/v1/projects/{name}/resume", "post"),
        ("/v1/items/{id}/approve", "post"),
        ("/v1/items/{id}/cancel", "post"),
        ("/v1/items/{id}/retry", "post"),
        ("/v1/items/{id}/logs", "get"),
        ("/v1/merge-queue", "get"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{method} {path}"
        );
    }
    let sort = openapi["paths"]["/v1/items"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sort")
        .expect("sort is documented");
    assert_eq!(
        sort["schema"]["enum"],
        json!(["id", "-id", "updated", "-updated", "cost", "-cost"])
    );
}

/// `queue.waiting_on_gate` counts items held by a closed gate, not items whose job is
/// queued or running.
#[tokio::test]
async fn stats_count_the_items_a_gate_holds_back() {
    let app = TestApp::spawn().await;
    let first = app.ingest("web", "First").await;
    let (status, _) = app
        .post(
            "/v1/items",
            &json!({"project": "web", "title": "Second", "body": "After the first.", "depends_on": [first]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, stats) = app.get("/v1/stats").await;
    assert_eq!(stats["queue"]["waiting_on_gate"], 1, "{stats}");
    assert_eq!(stats["queue"]["queued"], 1, "{stats}");
}
