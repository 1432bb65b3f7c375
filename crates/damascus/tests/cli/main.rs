//! The `damascus` binary, run as a user would run it, against a real PostgreSQL: one
//! test binary so every test shares the harness's cluster.

mod agents;
mod api;
mod bad_input;
mod browser;
mod embedded;
mod flow;
mod loops;
mod mcp;
mod metrics;
mod scripting;
mod webhooks;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use damascus_testdb::TestDatabase;

/// The binary with a clean environment: no DATABASE_URL or data dir leaks in from
/// the machine running the tests.
pub fn damascus() -> Command {
    let mut cmd = Command::cargo_bin("damascus").expect("the damascus binary is built");
    for name in [
        "DATABASE_URL",
        "DAMASCUS_DATA_DIR",
        "RUST_LOG",
        "DAMASCUS_LLM_BASE_URL",
        "DAMASCUS_LLM_MODEL",
        "DAMASCUS_LLM_API_KEY",
        "DAMASCUS_LLM_PRICES",
        "DAMASCUS_AGENT_PRICES",
        "DAMASCUS_AGENT",
        "DAMASCUS_AGENT_MODEL",
        "DAMASCUS_AGENT_ARGS",
        "DAMASCUS_GIT_AUTHOR",
        "DAMASCUS_CONFIG",
        "DAMASCUS_CONCURRENCY",
        "DAMASCUS_WEBHOOKS",
        "DAMASCUS_LISTEN",
        "DAMASCUS_BOOTSTRAP_TOKEN",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// Runs `damascus ARGS` against `db`, feeding `stdin`.
pub fn run(db: &TestDatabase, args: &[&str], stdin: &str) -> Output {
    damascus()
        .env("DATABASE_URL", &db.url)
        .args(args)
        .write_stdin(stdin)
        .output()
        .expect("run damascus")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts failure with `code` and a stderr that contains every one of `needles`.
pub fn refused(out: Output, code: i32, needles: &[&str]) {
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(&out)
    );
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

/// Whether an interface test may skip because `what` is not installed: only when the
/// operator opted out with `opt_out=1`. Otherwise the test fails, saying how to
/// install it, so a run without it never passes silently.
pub fn may_skip(opt_out: &str, what: &str, install: &str) -> bool {
    if std::env::var(opt_out).is_ok_and(|v| v == "1") {
        eprintln!("skipped: {what} is not installed and {opt_out}=1 is set");
        return true;
    }
    panic!("{what} is not installed; install it with: {install} (or set {opt_out}=1 to skip this test)");
}

pub fn write(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}

pub async fn with_web_project() -> TestDatabase {
    let db = TestDatabase::new().await;
    ok(run(
        &db,
        &[
            "project",
            "add",
            "web",
            "--repo",
            "/srv/git/web.git",
            "--test-command",
            "cargo test",
        ],
        "",
    ));
    db
}
