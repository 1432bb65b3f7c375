//! The CLI for scripts: `--json` prints the API's documents (checked against the API
//! itself, served in this process over HTTP), and `completions` prints a shell's script.

use damascus_api::{ApiConfig, AppState};
use damascus_testdb::TestDatabase;
use serde_json::Value;

use crate::{damascus, ok, refused, run, with_web_project};

/// The HTTP API on 127.0.0.1 over `db`, and a GET that answers its JSON.
struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn start(db: &TestDatabase) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState {
            pool: db.pool.clone(),
            config: ApiConfig::default(),
            logs_dir: None,
        };
        tokio::spawn(damascus_api::serve(listener, state, std::future::pending()));
        let token = damascus_db::tokens::create(&db.pool, "json-check")
            .await
            .unwrap()
            .token;
        Api { base, token }
    }

    async fn get(&self, path: &str) -> Value {
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "GET {path}");
        answer.json().await.unwrap()
    }
}

/// Runs `damascus ARGS` and parses all of its stdout as one JSON document.
fn json_of(db: &TestDatabase, args: &[&str]) -> Value {
    let out = ok(run(db, args, ""));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"))
}

/// Every field of `expected` is in `actual`, with the same value, named when not.
fn assert_same_fields(actual: &Value, expected: &Value, what: &str) {
    let expected = expected.as_object().expect("an object");
    let actual = actual.as_object().expect("an object");
    assert!(!expected.is_empty(), "{what}: nothing to compare");
    for (key, value) in expected {
        assert_eq!(actual.get(key), Some(value), "{what}: field {key}");
    }
    assert_eq!(actual.len(), expected.len(), "{what}: the same fields");
}

/// An item's document without the seconds of its current phase, which grow while
/// it is read.
fn without_clock(mut item: Value) -> Value {
    for visit in item["phases"].as_array_mut().expect("phases") {
        if visit["left_at"].is_null() {
            visit.as_object_mut().expect("a visit").remove("seconds");
        }
    }
    item
}

#[tokio::test]
async fn items_show_and_status_print_what_the_api_answers() {
    let db = with_web_project().await;
    let empty = json_of(&db, &["items", "--json"]);
    assert_eq!(empty["items"], Value::Array(vec![]), "{empty}");
    ok(run(
        &db,
        &["ingest", "--project", "web", "--lock", "db-schema"],
        "# Add a health check\n\nGET /healthz answers 200.\n",
    ));
    ok(run(
        &db,
        &["ingest", "--project", "web", "--depends-on", "1"],
        "# Log requests\n\nOne line per request.\n",
    ));
    let api = Api::start(&db).await;

    let listed = json_of(&db, &["items", "--json", "--limit", "1", "--offset", "1"]);
    assert_eq!(
        (listed["limit"].as_i64(), listed["offset"].as_i64()),
        (Some(1), Some(1))
    );
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    let item = &items[0];
    assert_eq!(item["id"], 2);
    assert_eq!(item["project"], "web");
    assert_eq!(item["title"], "Log requests");
    assert_eq!(item["phase"], "spec");
    assert_eq!(item["attempts"]["max_total"], 10);
    let from_api = api.get("/v1/items/2").await;
    assert_same_fields(
        item,
        &from_api["item"],
        "items --json against GET /v1/items/2",
    );
    assert_eq!(listed, api.get("/v1/items?limit=1&offset=1").await);
    let phase = json_of(&db, &["items", "--json", "--phase", "build"]);
    assert_eq!(phase["items"], Value::Array(vec![]), "{phase}");

    let shown = json_of(&db, &["show", "2", "--json"]);
    assert_eq!(
        without_clock(shown.clone()),
        without_clock(from_api),
        "show --json is GET /v1/items/2"
    );
    assert_eq!(shown["gates"][0]["kind"], "depends_on", "{shown}");
    assert_eq!(shown["gates"][0]["depends_on_item_id"], 1);
    assert_eq!(shown["events"][0]["kind"], "item.ingested", "{shown}");
    assert!(shown["merge_queue"].is_null());
    refused(
        run(&db, &["show", "9", "--json"], ""),
        1,
        &["work item 9 not found"],
    );

    let status = json_of(&db, &["status", "--json"]);
    assert_eq!(status["items_per_phase"]["spec"], 2, "{status}");
    assert_eq!(status["items_per_project"]["web"]["spec"], 2);
    assert!(status["queue"]["queued"].is_i64(), "{status}");
    assert_eq!(status["workers"], Value::Array(vec![]), "no worker runs");
    let mut without_workers = status.clone();
    without_workers.as_object_mut().unwrap().remove("workers");
    assert_eq!(without_workers, api.get("/v1/stats").await);
}

#[tokio::test]
async fn projects_tokens_and_webhooks_list_as_json_without_secrets() {
    let db = with_web_project().await;
    ok(run(
        &db,
        &["ingest", "--project", "web"],
        "# One\n\nText.\n",
    ));
    let projects = json_of(&db, &["project", "list", "--json"]);
    let web = &projects[0];
    assert_eq!(projects.as_array().unwrap().len(), 1, "{projects}");
    assert_eq!(web["name"], "web");
    assert_eq!(web["repository"], "/srv/git/web.git");
    assert_eq!(web["forge"], "local");
    assert_eq!(web["settings"]["test_command"], "cargo test");
    assert_eq!(web["items_per_phase"]["spec"], 1);
    assert_eq!(web["paused"], false);
    // A URL with a password, written past `project add`'s check, is shown masked.
    sqlx::query("update projects set repository = 'https://ana:hunter22@git.example.com/web.git'")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = ok(run(&db, &["project", "list", "--json"], ""));
    assert!(!out.contains("hunter22"), "{out}");
    let projects: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        projects[0]["repository"],
        "https://***@git.example.com/web.git"
    );

    let secret = ok(run(&db, &["token", "create", "ci-bot"], ""));
    let secret = secret.trim();
    ok(run(&db, &["token", "create", "old"], ""));
    ok(run(&db, &["token", "revoke", "old"], ""));
    let out = ok(run(&db, &["token", "list", "--json"], ""));
    assert!(
        !out.contains(secret),
        "the list never shows a secret:\n{out}"
    );
    let tokens: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(&str, &str)> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("ci-bot", "active"), ("old", "revoked")]);
    for token in tokens.as_array().unwrap() {
        let fields: Vec<&String> = token.as_object().unwrap().keys().collect();
        assert!(
            fields
                .iter()
                .all(|f| !f.contains("secret") && !f.contains("hash") && *f != "token"),
            "{fields:?}"
        );
    }

    ok(run(
        &db,
        &[
            "webhook",
            "add",
            "chat",
            "http://127.0.0.1:9/hook?key=abc123",
            "--event",
            "item.blocked",
        ],
        "",
    ));
    let out = ok(run(&db, &["webhook", "list", "--json"], ""));
    assert!(!out.contains("abc123") && !out.contains("whsec_"), "{out}");
    let hooks: Value = serde_json::from_str(&out).unwrap();
    let chat = &hooks["webhooks"][0];
    assert_eq!(chat["name"], "chat", "{hooks}");
    assert_eq!(chat["host"], "127.0.0.1:9");
    assert_eq!(chat["event_kinds"], serde_json::json!(["item.blocked"]));
    let api = Api::start(&db).await;
    assert_eq!(hooks, api.get("/v1/webhooks").await);
    let projects = json_of(&db, &["project", "list", "--json"]);
    assert_eq!(
        api.get("/v1/projects").await["projects"],
        projects,
        "the API answers the same projects"
    );
}

#[test]
fn completions_name_the_subcommands_and_refuse_an_unknown_shell() {
    let out = damascus()
        .args(["completions", "bash"])
        .output()
        .expect("run damascus");
    let script = ok(out);
    for word in [
        "_damascus()",
        "complete",
        "ingest",
        "webhook",
        "completions",
        "--json",
    ] {
        assert!(script.contains(word), "the bash script lacks {word:?}");
    }
    for shell in ["zsh", "fish"] {
        let script = ok(damascus().args(["completions", shell]).output().unwrap());
        assert!(script.contains("ingest"), "{shell}");
    }
    refused(
        damascus().args(["completions", "tcsh"]).output().unwrap(),
        2,
        &["invalid value 'tcsh'", "bash", "zsh", "fish"],
    );
}
