//! The web UI in a real browser: `damascus run` (workers + API + UI) on a real
//! database, driven by tests/browser/ui.test.mjs in headless Chromium through
//! playwright-core. Screenshots land in target/browser-artifacts/.
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
    let remote = dir.path().join("remote.git");
    init_bare_with_files(&remote, &[("README.md", "ui test\n")], &Identity::default())
        .await
        .unwrap();
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, include_str!("../../../../examples/demo-agent.sh")).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut project =
        NewProject::local(ProjectName::parse("web").unwrap(), remote.to_string_lossy());
    project.spec_mode = SpecMode::Passthrough;
    project.agent_command = Some(vec![agent.to_string_lossy().into_owned()]);
    project.max_attempts_per_phase = 2;
    project.max_attempts_total = 3;
    damascus_db::projects::add_project(&db.pool, &project)
        .await
        .unwrap();
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
            "2",
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
        "1-item-appeared.png",
        "2-merged.png",
        "3-question.png",
        "4-answered.png",
    ] {
        assert!(artifacts.join(shot).exists(), "missing screenshot {shot}");
    }
}
