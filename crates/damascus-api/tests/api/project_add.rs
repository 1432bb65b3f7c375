//! `POST /v1/projects`: a project registered over HTTP, with the CLI's defaults and its
//! refusals.

use reqwest::StatusCode;
use serde_json::json;

use crate::TestApp;

#[tokio::test]
async fn a_project_is_added_with_the_clis_defaults() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/projects",
            &json!({
                "name": "smoke",
                "repository": "/var/lib/damascus/data/repos/smoke.git",
                "spec_mode": "passthrough",
                "agent_command": ["/usr/share/damascus/examples/demo-agent.sh"],
                "test_command": "grep -qx hello hello.txt",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "smoke");
    assert_eq!(body["forge"], "local");
    assert_eq!(body["default_branch"], "main");
    let project = damascus_db::projects::find_project(&app.db.pool, "smoke")
        .await
        .unwrap();
    assert_eq!(project.max_attempts_per_phase, 3);
    assert_eq!(project.max_attempts_total, 10);
    assert_eq!(
        project.agent_command,
        Some(vec!["/usr/share/damascus/examples/demo-agent.sh".to_owned()])
    );
    assert_eq!(project.agent, damascus_core::AgentKind::Command);
    // Another agent, with its model and arguments, under a cap its model's price keeps.
    let (status, body) = app
        .post(
            "/v1/projects",
            &json!({
                "name": "gem",
                "repository": "/srv/gem.git",
                "agent": "gemini",
                "agent_model": "gemini-2.5-flash",
                "agent_args": ["--debug"],
                "cost_budget_usd": 1.5,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let gem = damascus_db::projects::find_project(&app.db.pool, "gem")
        .await
        .unwrap();
    assert_eq!(
        (
            gem.agent,
            gem.agent_model.as_deref(),
            gem.agent_args.clone()
        ),
        (
            damascus_core::AgentKind::Gemini,
            Some("gemini-2.5-flash"),
            vec!["--debug".to_owned()]
        )
    );
    // A story can go straight into it.
    let (status, body) = app
        .post(
            "/v1/items",
            &json!({"project": "smoke", "title": "Greet", "body": "Say hello."}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_wrong_project_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"name": "web", "repository": "/srv/other.git"}),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            json!({"name": "Bad Name", "repository": "/srv/x.git"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name:",
        ),
        (
            json!({"name": "x", "repository": " "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "repository",
        ),
        (
            json!({"name": "x", "repository": "https://u:secret@example.com/x.git"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "credentials",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "forge": "gitlab"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "forge:",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "spec_mode": "magic"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec_mode:",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "sandbox": "docker"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "sandbox:",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "agent_command": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_command:",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "agent": "cursor"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent: unknown agent \"cursor\"",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "agent": "command"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "needs the program to run",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "agent": "codex", "agent_args": [""]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is empty",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "agent": "codex", "agent_model": "my-own-model", "cost_budget_usd": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"my-own-model\" has no price",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "max_attempts_per_phase": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "per-phase attempt budget",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "token": "t"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `token`",
        ),
        (
            json!({"repository": "/srv/x.git"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `name`",
        ),
        (
            json!({"name": "x", "repository": "/srv/x.git", "forge": "gitea"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "forge",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = app.post("/v1/projects", &body).await;
        assert_eq!(status, want, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{body}: the message {message:?} should contain {needle:?}"
        );
    }
    let count: i64 = sqlx::query_scalar("select count(*) from projects")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "nothing refused was stored");
}
