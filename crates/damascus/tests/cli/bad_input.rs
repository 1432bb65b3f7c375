//! Every input a person can get wrong is refused with a message that says what was
//! wrong and how to fix it, and leaves the database as it was.

use damascus_testdb::TestDatabase;

use crate::{damascus, ok, refused, run, with_web_project, write};

async fn count(db: &TestDatabase, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn project_add_refusals() {
    let db = with_web_project().await;
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["project", "add", "Web", "--repo", "/r"],
            1,
            &["\"Web\" is not allowed", "lowercase"],
        ),
        (
            &["project", "add", "", "--repo", "/r"],
            1,
            &["project name is empty"],
        ),
        (
            &["project", "add", "web", "--repo", "/r"],
            1,
            &["\"web\" already exists"],
        ),
        (
            &["project", "add", "api", "--repo", " "],
            1,
            &["repository is empty"],
        ),
        (
            &["project", "add", "api", "--repo", "/r", "--forge", "gitlab"],
            2,
            &["unknown forge kind \"gitlab\"", "local, gitea, github"],
        ),
        (
            &["project", "add", "api", "--repo", "/r", "--forge", "github"],
            1,
            &["owner/name"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--forge",
                "gitea",
                "--forge-repo",
                "a/b",
            ],
            1,
            &["base URL"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--default-branch",
                "a b",
            ],
            1,
            &["not a valid git branch name"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--max-attempts-per-phase",
                "0",
            ],
            1,
            &["between 1 and 100"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--max-attempts-total",
                "2",
            ],
            1,
            &["smaller than the per-phase budget"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--max-attempts-total",
                "ten",
            ],
            2,
            &["invalid value 'ten'"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--cost-budget-usd",
                "-1",
            ],
            1,
            &["non-negative"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--daily-cost-budget-usd",
                "-0.5",
            ],
            1,
            &["non-negative"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--spec-mode",
                "magic",
            ],
            2,
            &["unknown spec mode", "refine, passthrough"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--merge-method",
                "fast",
            ],
            2,
            &["unknown merge method", "merge, squash, rebase"],
        ),
        (&["project", "add", "api"], 2, &["--repo"]),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--rounds-per-answer",
                "11",
            ],
            1,
            &["rounds an answer grants must be between 1 and 10", "got 11"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--merge-batch-size",
                "0",
            ],
            1,
            &["merge batch size must be between 1", "got 0"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--merge-batch-size",
                "many",
            ],
            2,
            &["--merge-batch-size", "many"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--branch-update",
                "squash",
            ],
            2,
            &["unknown branch update", "merge, rebase"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--sandbox",
                "docker",
            ],
            2,
            &["unknown sandbox", "none, bwrap"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent-command",
                "agent 'unclosed",
            ],
            1,
            &["cannot be split", "quotes"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent-command",
                "",
            ],
            1,
            &["agent command is empty"],
        ),
        (
            &["project", "add", "api", "--repo", "/r", "--agent", "cursor"],
            2,
            &[
                "unknown agent \"cursor\"",
                "claude, codex, gemini, opencode, command",
            ],
        ),
        (
            &[
                "project", "add", "api", "--repo", "/r", "--agent", "command",
            ],
            1,
            &["--agent command needs", "--agent-command"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent",
                "codex",
                "--agent-command",
                "./agent.sh",
            ],
            1,
            &[
                "--agent-command runs a program of your own",
                "--agent command",
            ],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent",
                "codex",
                "--agent-model",
                "gpt 5",
            ],
            1,
            &["--agent-model \"gpt 5\" is not a model name"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent-command",
                "./agent.sh",
                "--agent-arg=--fast",
            ],
            1,
            &["put \"--fast\" there"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent",
                "codex",
                "--cost-budget-usd",
                "2",
            ],
            1,
            &["cost cap", "reports tokens", "--agent-model", "gpt-5-codex"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent",
                "gemini",
                "--agent-model",
                "gemini-9-ultra",
                "--daily-cost-budget-usd",
                "20",
            ],
            1,
            &[
                "\"gemini-9-ultra\" has no price",
                "--agent-price gemini-9-ultra=INPUT/CACHED/OUTPUT",
            ],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--test-timeout-secs",
                "0",
            ],
            1,
            &["test time limit", "between 1 and 86400"],
        ),
        (
            &[
                "project",
                "add",
                "api",
                "--repo",
                "/r",
                "--agent-timeout-secs",
                "-5",
            ],
            1,
            &["agent time limit"],
        ),
    ];
    for (args, code, needles) in cases {
        refused(run(&db, args, ""), *code, needles);
    }
    assert_eq!(count(&db, "projects").await, 1);
}

/// The agent settings that are right are stored as given; a model priced only by the
/// deployment's `DAMASCUS_AGENT_PRICES` passes under a cap.
#[tokio::test]
async fn project_add_stores_the_agent_settings() {
    let db = with_web_project().await;
    ok(run(
        &db,
        &[
            "project",
            "add",
            "api",
            "--repo",
            "/r",
            "--agent",
            "codex",
            "--agent-model",
            "gpt-5-codex",
            "--agent-arg=-c",
            "--agent-arg=model_reasoning_effort=high",
            "--cost-budget-usd",
            "2",
        ],
        "",
    ));
    ok(run(
        &db,
        &[
            "project",
            "add",
            "tools",
            "--repo",
            "/r",
            "--agent-command",
            "./agent.sh --fast",
        ],
        "",
    ));
    let mut local = damascus();
    local
        .env("DATABASE_URL", &db.url)
        .env("DAMASCUS_AGENT_PRICES", "house-coder=0.5/0.05/2")
        .args([
            "project",
            "add",
            "house",
            "--repo",
            "/r",
            "--agent",
            "opencode",
            "--agent-model",
            "local/house-coder",
            "--cost-budget-usd",
            "1",
        ]);
    ok(local.output().unwrap());
    /// name, agent, agent_model, agent_args, agent_command
    type AgentRow = (
        String,
        String,
        Option<String>,
        Vec<String>,
        Option<Vec<String>>,
    );
    // The configuration file's [project_defaults] for a project that names no agent.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("damascus.toml");
    std::fs::write(
        &config,
        "[project_defaults]\nagent = \"gemini\"\nagent_model = \"gemini-2.5-flash\"\nagent_args = [\"--debug\"]\n",
    )
    .unwrap();
    let mut defaulted = damascus();
    defaulted.env("DATABASE_URL", &db.url).args([
        "--config",
        &config.to_string_lossy(),
        "project",
        "add",
        "gem",
        "--repo",
        "/r",
        "--cost-budget-usd",
        "1",
    ]);
    ok(defaulted.output().unwrap());
    let rows: Vec<AgentRow> = sqlx::query_as(
        "select name, agent, agent_model, agent_args, agent_command from projects order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows[1..],
        [
            (
                "api".into(),
                "codex".into(),
                Some("gpt-5-codex".into()),
                vec!["-c".into(), "model_reasoning_effort=high".into()],
                None
            ),
            (
                "tools".into(),
                "command".into(),
                None,
                vec![],
                Some(vec!["./agent.sh".into(), "--fast".into()])
            ),
            (
                "house".into(),
                "opencode".into(),
                Some("local/house-coder".into()),
                vec![],
                None
            ),
            (
                "gem".into(),
                "gemini".into(),
                Some("gemini-2.5-flash".into()),
                vec!["--debug".into()],
                None
            ),
        ]
    );
}

/// A token in the repository URL would be stored, listed and passed to git on its
/// command line: refused, without the token in the message.
#[tokio::test]
async fn project_add_refuses_credentials_in_the_repository_url() {
    let db = with_web_project().await;
    for (repo, redacted) in [
        (
            "https://bot:tok-0123456789@gitea.example.com/acme/api.git",
            "https://***@gitea.example.com/acme/api.git",
        ),
        (
            "https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/acme/api",
            "https://***@github.com/acme/api",
        ),
    ] {
        let out = run(&db, &["project", "add", "api", "--repo", repo], "");
        let err = crate::stderr(&out);
        refused(
            out,
            1,
            &[
                redacted,
                "holds credentials",
                "remove them from the URL",
                "DAMASCUS_GITEA_TOKEN",
                "DAMASCUS_GITHUB_TOKEN",
            ],
        );
        assert!(
            !err.contains("tok-0123456789") && !err.contains("ghp_16C7e42F"),
            "{err}"
        );
    }
    ok(run(
        &db,
        &[
            "project",
            "add",
            "api",
            "--repo",
            "ssh://git@gitea.example.com/acme/api.git",
        ],
        "",
    ));
    assert_eq!(count(&db, "projects").await, 2);
}

#[tokio::test]
async fn ingest_refusals() {
    let db = with_web_project().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.md", b"  \n");
    let untitled = write(dir.path(), "untitled.md", b"just text\n");
    let binary = write(dir.path(), "binary.md", b"# T\n\xff\xfe\x00");
    let nul = write(dir.path(), "nul.md", b"# T\nA\0B");
    let missing = dir.path().join("missing.md").to_string_lossy().into_owned();
    let cases: &[(&[&str], &str, i32, &[&str])] = &[
        (
            &["ingest", "-p", "ghost"],
            "# T\n",
            1,
            &["project \"ghost\" not found", "damascus project list"],
        ),
        (&["ingest", "-p", "Bad Name"], "# T\n", 1, &["not allowed"]),
        (
            &["ingest", "-p", "web", &empty],
            "",
            1,
            &["the story is empty", "# Title"],
        ),
        (
            &["ingest", "-p", "web", &untitled],
            "",
            1,
            &["no title", "--title"],
        ),
        (
            &["ingest", "-p", "web", &binary],
            "",
            1,
            &["not UTF-8", "binary.md"],
        ),
        (&["ingest", "-p", "web", &nul], "", 1, &["NUL byte"]),
        (
            &["ingest", "-p", "web", &missing],
            "",
            1,
            &["cannot read story file", "missing.md"],
        ),
        (
            &["ingest", "-p", "web", "--title", " "],
            "body",
            1,
            &["title is empty"],
        ),
        (
            &["ingest", "-p", "web", "--lock", "$(rm -rf /)"],
            "# T\n",
            2,
            &[
                "invalid value '$(rm -rf /)' for '--lock",
                "e.g. \"db-schema\"",
            ],
        ),
        (
            &["ingest", "-p", "web"],
            "",
            1,
            &["standard input", "the story is empty"],
        ),
        (&["ingest", "web.md"], "", 2, &["--project"]),
    ];
    for (args, stdin, code, needles) in cases {
        refused(run(&db, args, stdin), *code, needles);
    }
    assert_eq!(count(&db, "work_items").await, 0);
    assert_eq!(count(&db, "events_outbox").await, 0);
}

#[tokio::test]
async fn list_and_show_refusals() {
    let db = with_web_project().await;
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["items", "--phase", "done"],
            2,
            &["unknown phase \"done\"", "intake, spec"],
        ),
        (
            &["items", "--project", "ghost"],
            1,
            &["project \"ghost\" not found"],
        ),
        (&["items", "--limit", "0"], 2, &["0 is not in 1..=1000"]),
        (&["items", "--offset", "-1"], 2, &["--offset"]),
        (
            &["show", "99"],
            1,
            &["work item 99 not found", "damascus items"],
        ),
        (&["show", "0"], 2, &["0 is not in 1.."]),
        (&["show", "abc"], 2, &["invalid value 'abc'"]),
        (&["frobnicate"], 2, &["unrecognized subcommand"]),
        (&["db", "stop"], 1, &["DATABASE_URL is set", "unset it"]),
    ];
    for (args, code, needles) in cases {
        refused(run(&db, args, ""), *code, needles);
    }
}

#[tokio::test]
async fn commands_before_init_say_to_init() {
    let db = TestDatabase::empty().await;
    for args in [&["items"][..], &["project", "list"], &["show", "1"]] {
        refused(
            run(&db, args, ""),
            1,
            &["no Damascus schema yet; run: damascus init"],
        );
    }
}

#[test]
fn bad_database_urls_are_refused_without_leaking_the_password() {
    let unreachable = damascus()
        .env(
            "DATABASE_URL",
            "postgresql://app:hunter2@127.0.0.1:1/damascus?connect_timeout=2",
        )
        .arg("status")
        .output()
        .unwrap();
    refused(
        unreachable,
        1,
        &[
            "cannot connect to the database at",
            "app:***@127.0.0.1:1",
            "unset DATABASE_URL",
        ],
    );
    let out = damascus()
        .env(
            "DATABASE_URL",
            "postgresql://app:hunter2@127.0.0.1:1/damascus",
        )
        .arg("status")
        .output()
        .unwrap();
    assert!(!crate::stderr(&out).contains("hunter2"));
    let malformed = damascus()
        .args(["--database-url", "mysql://x", "status"])
        .output()
        .unwrap();
    refused(
        malformed,
        1,
        &[
            "not a valid PostgreSQL URL",
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ],
    );
}

#[test]
fn help_never_shows_the_database_url() {
    let out = damascus()
        .env("DATABASE_URL", "postgresql://app:hunter2@db/x")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!crate::stdout(&out).contains("hunter2"));
}

#[tokio::test]
async fn webhook_commands_and_their_refusals() {
    let db = with_web_project().await;
    let secret = ok(run(
        &db,
        &[
            "webhook",
            "add",
            "chat",
            "https://chat.example/hooks/T0/secret-path",
            "--event",
            "item.blocked",
        ],
        "",
    ));
    assert!(secret.trim().starts_with("whsec_"), "{secret}");
    let listed = ok(run(&db, &["webhook", "list"], ""));
    assert!(
        listed.contains("chat") && listed.contains("chat.example"),
        "{listed}"
    );
    assert!(listed.contains("item.blocked"), "{listed}");
    assert!(
        !listed.contains("secret-path"),
        "the URL's path stays out: {listed}"
    );
    let shown = ok(run(&db, &["webhook", "show", "chat"], ""));
    assert!(shown.contains(secret.trim()), "{shown}");
    // (arguments, exit code, what stderr says)
    type Case<'a> = (&'a [&'a str], i32, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["webhook", "add", "chat", "https://other.example/x"],
            1,
            &["a webhook named \"chat\" exists already"],
        ),
        (
            &["webhook", "add", "Chat Room", "https://x.example/"],
            1,
            &["must be 1 to 63 lowercase letters"],
        ),
        (
            &["webhook", "add", "ftp", "ftp://x.example/hook?token=abc"],
            1,
            &["is not an http:// or https:// URL", "x.example"],
        ),
        (
            &[
                "webhook",
                "add",
                "e",
                "https://x.example/",
                "--event",
                "item.blokced",
            ],
            1,
            &[
                "\"item.blokced\" is not one Damascus writes",
                "item.blocked",
            ],
        ),
        (
            &[
                "webhook",
                "add",
                "s",
                "https://x.example/",
                "--secret",
                "hunter2",
            ],
            1,
            &["whsec_"],
        ),
        (
            &[
                "webhook",
                "add",
                "m",
                "https://x.example/",
                "--max-attempts",
                "0",
            ],
            2,
            &["0 is not in 1..=100"],
        ),
        (
            &["webhook", "redrive", "nope"],
            1,
            &["no webhook named \"nope\"", "damascus webhook list"],
        ),
        (
            &["webhook", "redrive", "chat", "--event", "999999"],
            1,
            &["event 999999 not found"],
        ),
        (
            &["webhook", "redrive", "chat", "--since", "yesterday"],
            2,
            &["--since"],
        ),
        (
            &["webhook", "remove", "nope"],
            1,
            &["no webhook named \"nope\""],
        ),
        (
            &["webhook", "test", "chat"],
            1,
            &["did not take the test event", "chat.example"],
        ),
    ];
    for (args, code, needles) in cases {
        let out = run(&db, args, "");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("token=abc"),
            "a URL's query is never echoed"
        );
        refused(out, *code, needles);
    }
    ok(run(&db, &["webhook", "remove", "chat"], ""));
    assert!(ok(run(&db, &["webhook", "list"], "")).contains("no webhooks yet"));
}
