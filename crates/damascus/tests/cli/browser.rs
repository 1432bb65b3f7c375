//! The web console in a real browser: `damascus run` (workers + API + UI) on a real
//! database with real git repositories and scripted agents, driven by
//! tests/browser/ui.test.mjs in headless Chromium through playwright-core: every page
//! with real data, the dashboard's numbers against `GET /v1/stats`, approve, cancel and
//! retry from the drawer, a refused action's message, the live log tail within a
//! second. Screenshots land in target/browser-artifacts/.
//!
//! Needs Debian's `chromium` and Node.js; `.ci/run` installs Chromium. Where Chromium
//! is not installed the test fails, saying how to install it, unless
//! DAMASCUS_SKIP_BROWSER=1 opts out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use damascus_core::{NewProject, ProjectName, SpecMode};
use damascus_git::{init_bare_with_files, Identity};
use damascus_testdb::TestDatabase;

const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_web_ui_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists()
        && crate::may_skip(
            "DAMASCUS_SKIP_BROWSER",
            CHROMIUM,
            "apt-get install chromium (.ci/run does)",
        )
    {
        return;
    }
    let root = workspace_root();
    let browser_dir = root.join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser_dir)
            .status()
            .expect("npm is installed (Node.js 20)");
        assert!(installed.success(), "npm ci in tests/browser failed");
    }

    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let demo_agent = dir.path().join("agent.sh");
    std::fs::write(
        &demo_agent,
        include_str!("../../../../examples/demo-agent.sh"),
    )
    .unwrap();
    std::fs::set_permissions(&demo_agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The operator's agent: fails while FAIL exists (a blocked item to retry), and for
    // the story "Tail the log" prints a marker only once GO exists (the test creates it
    // when the drawer follows the log), then keeps running a while.
    let fail_flag = dir.path().join("FAIL");
    let go_flag = dir.path().join("GO");
    std::fs::write(&fail_flag, "").unwrap();
    let marker = format!("log-marker-{}-{}", std::process::id(), started_nanos());
    let ops_agent = dir.path().join("ops-agent.sh");
    std::fs::write(
        &ops_agent,
        OPS_AGENT
            .replace("@FAIL@", &fail_flag.to_string_lossy())
            .replace("@GO@", &go_flag.to_string_lossy())
            .replace("@MARKER@", &marker),
    )
    .unwrap();
    std::fs::set_permissions(&ops_agent, std::fs::Permissions::from_mode(0o755)).unwrap();

    // web: the demo agent, spec from the story; gated: every spec waits for a person's
    // approval; ops: the operator's agent, one attempt per phase, a daily cap.
    for (name, agent, approval) in [
        ("web", &demo_agent, false),
        ("gated", &demo_agent, true),
        ("ops", &ops_agent, false),
    ] {
        let remote = dir.path().join(format!("{name}.git"));
        init_bare_with_files(&remote, &[("README.md", "ui test\n")], &Identity::default())
            .await
            .unwrap();
        let mut project =
            NewProject::local(ProjectName::parse(name).unwrap(), remote.to_string_lossy());
        project.spec_mode = SpecMode::Passthrough;
        project.agent = damascus_core::AgentKind::Command;
        project.agent_command = Some(vec![agent.to_string_lossy().into_owned()]);
        project.require_approval = approval;
        project.max_attempts_per_phase = if name == "ops" { 1 } else { 2 };
        project.max_attempts_total = 3;
        project.daily_cost_budget_usd =
            (name != "gated").then_some(if name == "ops" { 0.5 } else { 5.0 });
        damascus_db::projects::add_project(&db.pool, &project)
            .await
            .unwrap();
    }
    let token = damascus_db::tokens::create(&db.pool, "browser")
        .await
        .unwrap()
        .token;

    let port = free_port();
    let mut server = Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--concurrency",
            "4",
            "--poll-secs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "damascus run did not listen"
        );
        assert!(
            server.try_wait().unwrap().is_none(),
            "damascus run exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let artifacts = root.join("target/browser-artifacts");
    let outcome = Command::new("node")
        .arg("ui.test.mjs")
        .current_dir(&browser_dir)
        .env("BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("TOKEN", &token)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .env("DATA_DIR", dir.path().join("data"))
        .env("FAIL_FLAG", &fail_flag)
        .env("GO_FLAG", &go_flag)
        .env("MARKER", &marker)
        .output()
        .expect("node is installed (Node.js 20)");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = server.wait().unwrap();
    assert!(
        outcome.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&outcome.stdout),
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert!(
        stopped.success(),
        "damascus run did not stop cleanly: {stopped}"
    );
    for shot in [
        "dashboard.png",
        "items.png",
        "drawer.png",
        "drawer-log.png",
        "drawer-blocked.png",
        "projects.png",
    ] {
        assert!(artifacts.join(shot).exists(), "missing screenshot {shot}");
    }
}

/// The agent of the `ops` project (see the test).
const OPS_AGENT: &str = r#"#!/bin/sh
prompt=$(cat)
case "$prompt" in
*"Fail until fixed"*)
    if [ -e '@FAIL@' ]; then
        echo "agent: the FAIL flag is set, giving up" >&2
        exit 3
    fi
    ;;
*"Tail the log"*)
    echo "agent: waiting for the go flag" >&2
    while [ ! -e '@GO@' ]; do sleep 0.05; done
    echo "agent: @MARKER@" >&2
    # A tool call in Claude Code's stream-json, while the agent goes on working: the
    # drawer's transcript shows it before the run ends.
    printf '%s\n' '{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"echo @MARKER@-tool"}}]}}'
    sleep 3
    ;;
esac
echo hello > hello.txt
date +%s%N > build-stamp.txt
printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"num_turns":3,"total_cost_usd":0.045,"permission_denials":[],"result":"wrote hello.txt","modelUsage":{"claude-sonnet-4-5":{"inputTokens":12000,"outputTokens":900,"costUSD":0.042},"claude-haiku-4-5":{"inputTokens":3000,"outputTokens":200,"costUSD":0.003}}}'
"#;

fn started_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
