//! The API's commands: tokens, and the refusals of serve and run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use damascus_testdb::TestDatabase;

use crate::{ok, refused, run};

const BOOTSTRAP: &str = "dmsc_0_0123456789abcdef0123456789ABCDEFghij";

/// `damascus run` with `token` as DAMASCUS_BOOTSTRAP_TOKEN until `/healthz` answers;
/// returns its address and what it printed to stderr once stopped.
async fn run_with_bootstrap(db: &TestDatabase, token: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_remove("DAMASCUS_DATA_DIR")
        .env("DATABASE_URL", &db.url)
        .env("DAMASCUS_BOOTSTRAP_TOKEN", token)
        .args(["--data-dir", data.path().to_str().unwrap()])
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let started = Instant::now();
    while reqwest::get(&health).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "damascus run never answered /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_first_token_comes_from_the_environment() {
    let db = TestDatabase::new().await;
    let said = run_with_bootstrap(&db, BOOTSTRAP).await;
    assert!(said.contains("registered the API token"), "{said}");
    assert!(
        !said.contains(BOOTSTRAP),
        "the token itself is never printed: {said}"
    );
    assert_eq!(
        damascus_db::tokens::verify(&db.pool, BOOTSTRAP)
            .await
            .unwrap(),
        Some(0)
    );
    let listed = ok(run(&db, &["token", "list"], ""));
    assert!(listed.contains("bootstrap"), "{listed}");
    // A restart with the same token says nothing and changes nothing.
    let said = run_with_bootstrap(&db, BOOTSTRAP).await;
    assert!(!said.contains("BOOTSTRAP"), "{said}");
    // Once revoked and another token exists, it is not brought back.
    ok(run(&db, &["token", "create", "ops"], ""));
    ok(run(&db, &["token", "revoke", "bootstrap"], ""));
    let said = run_with_bootstrap(&db, BOOTSTRAP).await;
    assert!(said.contains("already has API tokens"), "{said}");
    assert_eq!(
        damascus_db::tokens::verify(&db.pool, BOOTSTRAP)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_malformed_bootstrap_token_is_refused_before_anything_starts() {
    let db = TestDatabase::new().await;
    for (token, needle) in [
        ("secret", "must start with dmsc_0_"),
        ("dmsc_0_short", "32 to 128 letters and digits, got 5"),
        (
            "dmsc_0_0123456789abcdef0123456789abcdef-x",
            "letters and digits",
        ),
    ] {
        let out = crate::damascus()
            .env("DATABASE_URL", &db.url)
            .env("DAMASCUS_BOOTSTRAP_TOKEN", token)
            .args(["run", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        refused(
            out,
            1,
            &["DAMASCUS_BOOTSTRAP_TOKEN", needle, "openssl rand"],
        );
    }
    let tokens: i64 = sqlx::query_scalar("select count(*) from api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tokens, 0);
}

#[tokio::test]
async fn tokens_are_shown_once_listed_and_revoked() {
    let db = TestDatabase::new().await;
    let token = ok(run(&db, &["token", "create", "ci-bot"], ""));
    let token = token.trim();
    assert!(token.starts_with("dmsc_"), "{token}");
    assert!(damascus_db::tokens::verify(&db.pool, token)
        .await
        .unwrap()
        .is_some());
    let listed = ok(run(&db, &["token", "list"], ""));
    assert!(
        listed.contains("ci-bot") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(token), "the list never shows a secret");
    refused(
        run(&db, &["token", "create", "ci-bot"], ""),
        1,
        &["exists already"],
    );
    refused(
        run(&db, &["token", "create", "no spaces"], ""),
        1,
        &["not allowed", "letters, digits"],
    );
    ok(run(&db, &["token", "revoke", "ci-bot"], ""));
    assert!(damascus_db::tokens::verify(&db.pool, token)
        .await
        .unwrap()
        .is_none());
    refused(
        run(&db, &["token", "revoke", "ci-bot"], ""),
        1,
        &["no active token named \"ci-bot\""],
    );
}

#[tokio::test]
async fn serve_refusals() {
    let db = TestDatabase::new().await;
    refused(
        run(&db, &["serve", "--listen", "localhost"], ""),
        2,
        &["invalid value 'localhost'"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        run(&db, &["serve", "--listen", &addr], ""),
        1,
        &["cannot listen on", "--listen"],
    );
    refused(
        run(&db, &["run", "--listen", &addr], ""),
        1,
        &["cannot listen on"],
    );
}

#[test]
fn config_files_and_settings_are_checked_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let good = file(
        "good.toml",
        "concurrency = 6\nretention_days = 7\ngit_timeout_secs = 30\nwebhooks = [\"https://hooks.example.com/T0/secret\"]\n[llm]\nbase_url = \"http://litellm:4000/v1\"\nmodel = \"m\"\napi_key = \"sk-hidden\"\n[agent_prices]\n\"house-coder\" = \"0.5/0.05/2\"\n",
    );
    let out = crate::ok(
        crate::damascus()
            .env("DATABASE_URL", "postgresql://app:pw@db/x")
            .args(["--config", &good, "config", "check"])
            .output()
            .unwrap(),
    );
    for needle in [
        "concurrency      6",
        "retention_days   7",
        "git_timeout_secs 30",
        "llm.api_key      *** (set)",
        "https://hooks.example.com/***",
        "app:***@db",
        "agent_prices",
        "--agent-price: house-coder",
        "project_defaults (none: a project without --agent runs claude)",
    ] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
    assert!(
        !out.contains("sk-hidden") && !out.contains("secret") && !out.contains(":pw@"),
        "{out}"
    );
    // The environment overrides the file.
    let out = crate::ok(
        crate::damascus()
            .env("DAMASCUS_CONCURRENCY", "9")
            .args(["--config", &good, "config", "check"])
            .output()
            .unwrap(),
    );
    assert!(out.contains("concurrency      9"), "{out}");

    let cases: &[(&str, &str, i32, &[&str])] = &[
        (
            "typo.toml",
            "concurency = 6\n",
            2,
            &["unknown field `concurency`", "expected one of"],
        ),
        (
            "range.toml",
            "concurrency = 0\n",
            2,
            &["concurrency must be between 1 and 1024"],
        ),
        (
            "git.toml",
            "git_timeout_secs = 0\n",
            2,
            &["git_timeout_secs must be between 1 and 86400"],
        ),
        (
            "listen.toml",
            "listen = \"everywhere\"\n",
            2,
            &["listen \"everywhere\" is not an address"],
        ),
        (
            "hook.toml",
            "webhooks = [\"ftp://x\"]\n",
            2,
            &["webhooks", "http:// or https://"],
        ),
        (
            "llm.toml",
            "[llm]\ntimeout_secs = 0\n",
            2,
            &["llm.timeout_secs"],
        ),
        (
            "defaults.toml",
            "[project_defaults]\nagent = \"cursor\"\n",
            2,
            &["project_defaults.agent", "unknown agent \"cursor\""],
        ),
        (
            "defaults-model.toml",
            "[project_defaults]\nagent_model = \"gpt-5\"\n",
            2,
            &["agent_model and agent_args go with an agent"],
        ),
        (
            "prices.toml",
            "[agent_prices]\n\"gpt-5\" = \"cheap\"\n",
            2,
            &[
                "[agent_prices]",
                "MODEL=INPUT/CACHED/OUTPUT",
                "gpt-5=1.25/0.125/10",
            ],
        ),
        (
            "syntax.toml",
            "concurrency = \n",
            2,
            &["syntax.toml (line 1)"],
        ),
        (
            "secret.toml",
            "llm_api_key = \"sk-leak\"\n",
            2,
            &["unknown field `llm_api_key`", "(line 1)"],
        ),
    ];
    for (name, text, code, needles) in cases {
        let path = file(name, text);
        let out = crate::damascus()
            .args(["--config", &path, "config", "check"])
            .output()
            .unwrap();
        assert!(
            !crate::stderr(&out).contains("sk-leak"),
            "a secret in a bad file is never echoed"
        );
        crate::refused(out, *code, needles);
    }
    crate::refused(
        crate::damascus()
            .args(["--config", "/nonexistent.toml", "status"])
            .output()
            .unwrap(),
        2,
        &["cannot read the configuration file /nonexistent.toml"],
    );
    crate::refused(
        crate::damascus()
            .args(["config", "check", "--webhook", "mailto:x"])
            .output()
            .unwrap(),
        1,
        &["DAMASCUS_WEBHOOKS", "http:// or https://"],
    );
}

/// compose.yaml passes `VAR=` for every optional setting the operator left out: an empty
/// Damascus variable means what an unset one does, while a wrong one is still refused.
#[test]
fn an_empty_setting_counts_as_unset() {
    let mut cmd = crate::damascus();
    for name in [
        "DAMASCUS_LLM_BASE_URL",
        "DAMASCUS_LLM_MODEL",
        "DAMASCUS_LLM_API_KEY",
        "DAMASCUS_WEBHOOKS",
        "DAMASCUS_AGENT_USER",
        "DAMASCUS_CONCURRENCY",
        "DAMASCUS_GRACE_SECS",
        "DAMASCUS_BOOTSTRAP_TOKEN",
    ] {
        cmd.env(name, "");
    }
    crate::ok(cmd.args(["config", "check"]).output().unwrap());
    crate::refused(
        crate::damascus()
            .env("DAMASCUS_LLM_BASE_URL", "ftp://model")
            .env("DAMASCUS_LLM_MODEL", "m")
            .args(["config", "check"])
            .output()
            .unwrap(),
        1,
        &["DAMASCUS_LLM_BASE_URL", "http:// or https://"],
    );
}
