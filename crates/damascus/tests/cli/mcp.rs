//! `damascus mcp` spoken to by two independent MCP clients: rmcp's (Rust) and the
//! official Python SDK's, both over stdio against a real database.

use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};

use damascus_testdb::TestDatabase;

async fn database() -> TestDatabase {
    let db = TestDatabase::new().await;
    sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git')")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

/// `damascus mcp` on the test's database, with an rmcp client talking to it.
async fn mcp_client(db: &TestDatabase) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let url = db.url.clone();
    let transport = TokioChildProcess::new(
        tokio::process::Command::new(assert_cmd::cargo::cargo_bin("damascus")).configure(|cmd| {
            cmd.arg("mcp")
                .env_clear()
                .env("DATABASE_URL", &url)
                .env("PATH", std::env::var("PATH").unwrap_or_default());
        }),
    )
    .unwrap();
    ().serve(transport).await.expect("initialize")
}

fn args(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_string(&result.content).unwrap()
}

#[tokio::test]
async fn the_rmcp_client_feeds_and_unblocks_damascus() {
    let db = database().await;
    let client = mcp_client(&db).await;
    let info = client.peer_info().expect("the server introduced itself");
    assert!(info.capabilities.tools.is_some());
    assert_eq!(
        info.server_info.as_ref().map(|s| s.name.as_str()),
        Some("damascus")
    );

    let mut tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        [
            "answer_question",
            "get_item",
            "ingest_story",
            "list_human_issues",
            "list_items"
        ]
    );
    let schema = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "ingest_story")
        .unwrap()
        .input_schema;
    assert!(serde_json::to_string(&schema)
        .unwrap()
        .contains("\"title\""));

    let call = |name: &'static str, arguments: Value| {
        let client = &client;
        async move {
            client
                .call_tool(CallToolRequestParams::new(name).with_arguments(args(arguments)))
                .await
        }
    };
    let ingested = call(
        "ingest_story",
        json!({"project": "web", "title": "From an agent", "body": "Do it."}),
    )
    .await
    .unwrap();
    assert_ne!(ingested.is_error, Some(true), "{ingested:?}");
    let item = ingested.structured_content.clone().unwrap();
    assert_eq!(item["item"]["phase"], "spec");
    let id = item["item"]["id"].as_i64().unwrap();
    let stored: String = sqlx::query_scalar("select source from work_items where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "mcp");

    // A question, answered through MCP, resumes the item.
    sqlx::query("update work_items set phase = 'blocked', resume_phase = 'spec' where id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let issue: i64 = sqlx::query_scalar("insert into human_issues (item_id, phase, question) values ($1, 'spec', 'Which DB?') returning id")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let open = call("list_human_issues", json!({"status": "open"}))
        .await
        .unwrap();
    assert_eq!(
        open.structured_content.unwrap()["human_issues"][0]["id"],
        issue
    );
    let answer = call(
        "answer_question",
        json!({"human_issue_id": issue, "answer": "PostgreSQL"}),
    )
    .await
    .unwrap();
    let answer = answer.structured_content.unwrap();
    assert_eq!(answer["human_issue"]["status"], "answered");
    assert_eq!(answer["resumed_in"], "spec");
    let detail = call("get_item", json!({"id": id}))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert_eq!(detail["item"]["phase"], "spec");
    assert_eq!(detail["human_issues"][0]["answer"], "PostgreSQL");
    assert_eq!(detail["gates"], json!([]));
    let locked = call(
        "ingest_story",
        json!({"project": "web", "title": "Schema", "locks": ["db-schema"]}),
    )
    .await
    .unwrap()
    .structured_content
    .unwrap();
    let locked = call("get_item", json!({"id": locked["item"]["id"]}))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert_eq!(locked["gates"][0]["kind"], "lock");
    assert_eq!(locked["gates"][0]["lock"], "db-schema");
    assert_eq!(locked["gates"][0]["open"], false);
    assert!(locked["merge_queue"].is_null());
    // In review, it is in its repository's merge queue, and get_item says where.
    sqlx::query("update work_items set phase = 'review' where id = $1")
        .bind(locked["item"]["id"].as_i64().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    let queued = call("get_item", json!({"id": locked["item"]["id"]}))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert_eq!(queued["merge_queue"]["position"], 1);
    assert_eq!(queued["merge_queue"]["base_branch"], "main");

    // Bad arguments: each a tool error, or a protocol error, that names the problem;
    // the server keeps serving.
    for (name, arguments, needle) in [
        (
            "ingest_story",
            json!({"project": "ghost", "title": "x"}),
            "project \\\"ghost\\\" not found",
        ),
        (
            "ingest_story",
            json!({"project": "web", "title": " "}),
            "title is empty",
        ),
        (
            "ingest_story",
            json!({"project": "web", "title": "x", "locks": ["two words"]}),
            "locks: lock name \\\"two words\\\" is not allowed",
        ),
        (
            "answer_question",
            json!({"human_issue_id": issue, "answer": "again"}),
            "already answered",
        ),
        (
            "answer_question",
            json!({"human_issue_id": 999, "answer": "x"}),
            "human issue 999 not found",
        ),
        ("get_item", json!({"id": 999}), "work item 999 not found"),
        ("list_items", json!({"phase": "done"}), "unknown phase"),
        ("list_items", json!({"limit": 0}), "between 1 and 500"),
        (
            "list_items",
            json!({"sort": "price"}),
            "is not an order; use one of: id, -id",
        ),
        (
            "list_items",
            json!({"q": "x".repeat(201)}),
            "longer than 200 characters",
        ),
    ] {
        let result = call(name, arguments.clone()).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{name} {arguments}");
        assert!(
            text_of(&result).contains(needle),
            "{name} {arguments}: {}",
            text_of(&result)
        );
    }
    for (name, arguments, needle) in [
        ("ingest_story", json!({"project": "web"}), "title"),
        ("get_item", json!({"id": "seven"}), "invalid type"),
        ("list_items", json!({"colour": "red"}), "unknown field"),
    ] {
        match call(name, arguments.clone()).await {
            Ok(result) => {
                assert_eq!(result.is_error, Some(true), "{name} {arguments}");
                assert!(
                    text_of(&result).contains(needle),
                    "{name} {arguments}: {}",
                    text_of(&result)
                );
            }
            Err(e) => assert!(e.to_string().contains(needle), "{name} {arguments}: {e}"),
        }
    }
    let still: i64 = call("list_items", json!({}))
        .await
        .unwrap()
        .structured_content
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .len() as i64;
    assert_eq!(still, 2, "the two items ingested above, none refused");
    // Search and order, as the API's `q` and `sort`.
    let found = call("list_items", json!({"q": "from an AGENT", "sort": "-id"}))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    let titles: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["From an agent"], "{found}");
    let newest_first: Vec<i64> = call("list_items", json!({"sort": "-id"}))
        .await
        .unwrap()
        .structured_content
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert!(
        newest_first.windows(2).all(|w| w[0] > w[1]) && newest_first.len() == 2,
        "{newest_first:?}"
    );
    client.cancel().await.unwrap();
}

/// The official Python SDK agrees. Without the SDK the test fails, saying how to
/// install it (`.ci/run` does), unless DAMASCUS_SKIP_PYTHON_MCP=1 opts out.
#[tokio::test]
async fn the_python_sdk_client_agrees() {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk
        && crate::may_skip(
            "DAMASCUS_SKIP_PYTHON_MCP",
            "the Python MCP SDK",
            "pip install -r tests/mcp/requirements.txt",
        )
    {
        return;
    }
    let db = database().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp/client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("DAMASCUS_BIN", assert_cmd::cargo::cargo_bin("damascus"))
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(seen["server"], "damascus");
    assert_eq!(
        seen["tools"],
        json!([
            "answer_question",
            "get_item",
            "ingest_story",
            "list_human_issues",
            "list_items"
        ])
    );
    assert_eq!(seen["ingested_phase"], "spec");
    assert_eq!(seen["listed_titles"], json!(["From Python"]));
    assert_eq!(seen["bad_is_error"], true);
    assert!(
        seen["bad_text"].as_str().unwrap().contains("not found"),
        "{seen}"
    );
    println!(
        "python SDK negotiated protocol {}",
        seen["protocol_version"]
    );
}

/// The demo's blocked item answered through MCP: the answer rebuilds it (no review runs
/// first), the agent follows the guidance in its prompt, and the item merges.
#[tokio::test]
async fn an_answer_through_mcp_rebuilds_the_item_and_it_merges() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().to_str().unwrap();
    let demo = crate::ok(
        crate::damascus()
            .env("DATABASE_URL", &db.url)
            .args(["--data-dir", data, "demo"])
            .output()
            .unwrap(),
    );
    assert!(demo.contains("item 2 (Say goodbye): blocked"), "{demo}");
    let client = mcp_client(&db).await;
    let call = |name: &'static str, arguments: Value| {
        let client = &client;
        async move {
            client
                .call_tool(CallToolRequestParams::new(name).with_arguments(args(arguments)))
                .await
                .unwrap()
                .structured_content
                .unwrap()
        }
    };
    let open = call("list_human_issues", json!({"status": "open"})).await;
    assert_eq!(open["human_issues"][0]["on_answer"], "build");
    assert!(
        open["human_issues"][0]["hint"]
            .as_str()
            .unwrap()
            .starts_with("answer with guidance to rebuild the change with it"),
        "{open}"
    );
    let answered = call(
        "answer_question",
        json!({"human_issue_id": 1, "answer": "Write farewell.txt with the single line goodbye."}),
    )
    .await;
    assert_eq!(answered["resumed_in"], "build");
    crate::ok(
        crate::damascus()
            .env("DATABASE_URL", &db.url)
            .args(["--data-dir", data, "cycle", "--concurrency", "2"])
            .output()
            .unwrap(),
    );
    let item = call("get_item", json!({"id": 2})).await;
    assert_eq!(item["item"]["phase"], "merged", "{item}");
    let steps: Vec<String> = item["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "item.phase_changed")
        .map(|e| {
            format!(
                "{}>{}",
                e["payload"]["from"].as_str().unwrap(),
                e["payload"]["to"].as_str().unwrap()
            )
        })
        .collect();
    let after: Vec<&str> = steps
        .iter()
        .skip_while(|s| s.as_str() != "review>blocked")
        .skip(1)
        .map(String::as_str)
        .collect();
    assert_eq!(
        after,
        ["blocked>build", "build>review", "review>merged"],
        "{steps:?}"
    );
    client.cancel().await.unwrap();
}
