//! Fixtures: a project on a bare repository, scripted agents, and running the queue
//! with the loops until nothing is runnable.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use damascus_core::{NewProject, ProjectName, SpecMode, Story};
use damascus_git::{init_bare_with_files, Git, Identity};
use damascus_loops::{LlmConfig, Loops, LoopsConfig};
use damascus_queue::{run_until_idle, CycleSummary, QueueConfig, RetryPolicy};
use damascus_testdb::TestDatabase;

pub struct Setup {
    pub db: TestDatabase,
    pub dir: tempfile::TempDir,
    pub remote: PathBuf,
}

impl Setup {
    pub async fn new() -> Setup {
        Setup::with_files(&[("README.md", "demo\n")]).await
    }

    /// A setup whose repository's main holds `files`.
    pub async fn with_files(files: &[(&str, &str)]) -> Setup {
        let db = TestDatabase::new().await;
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.git");
        init_bare_with_files(&remote, files, &Identity::default())
            .await
            .unwrap();
        Setup { db, dir, remote }
    }

    /// Writes an executable agent script and returns its path.
    pub fn agent(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    pub async fn project(&self, agent: &str, mode: SpecMode, edit: impl FnOnce(&mut NewProject)) {
        let mut project = NewProject::local(
            ProjectName::parse("web").unwrap(),
            self.remote.to_string_lossy(),
        );
        project.spec_mode = mode;
        project.agent = damascus_core::AgentKind::Command;
        project.agent_command = Some(vec![agent.to_owned()]);
        project.agent_timeout_secs = 20;
        project.test_timeout_secs = 20;
        edit(&mut project);
        damascus_db::projects::add_project(&self.db.pool, &project)
            .await
            .unwrap();
    }

    pub async fn ingest(&self, title: &str, body: &str) -> i64 {
        let story = Story::new(title, body).unwrap();
        damascus_db::items::ingest(
            &self.db.pool,
            &ProjectName::parse("web").unwrap(),
            &story,
            "test",
        )
        .await
        .unwrap()
        .id
    }

    pub fn loops_config(&self, llm: Option<LlmConfig>) -> LoopsConfig {
        LoopsConfig {
            data_dir: self.dir.path().join("data"),
            llm,
            identity: Identity::default(),
            agent_env: vec![],
            claude_max_turns: 5,
            gitea_token: Some("gitea-secret".into()),
            github_token: None,
            agent_user: None,
            git_timeout: damascus_git::DEFAULT_TIMEOUT,
            github_write_gap: std::time::Duration::from_millis(20),
            head_wait: damascus_loops::DEFAULT_HEAD_WAIT,
            prices: damascus_core::prices::PriceTable::built_in(),
        }
    }

    pub async fn cycle_with(&self, config: LoopsConfig) -> CycleSummary {
        self.cycle_at(config, 2).await
    }

    /// Runs what is runnable with `concurrency` phases at once, until nothing is.
    pub async fn cycle_at(&self, config: LoopsConfig, concurrency: u32) -> CycleSummary {
        let queue = QueueConfig {
            concurrency: Some(concurrency),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
            retry: RetryPolicy {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            reap_interval: Duration::from_secs(5),
        };
        run_until_idle(
            self.db.pool.clone(),
            queue,
            Arc::new(Loops::new(config).unwrap()),
        )
        .await
        .unwrap()
    }

    pub async fn cycle(&self) -> CycleSummary {
        self.cycle_with(self.loops_config(None)).await
    }

    pub async fn phase(&self, item: i64) -> String {
        sqlx::query_scalar("select phase::text from work_items where id = $1")
            .bind(item)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn steps(&self, item: i64) -> Vec<String> {
        sqlx::query_scalar(
            "select (payload->>'from') || '>' || (payload->>'to') from events_outbox
             where item_id = $1 and kind = 'item.phase_changed' order by id",
        )
        .bind(item)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    pub async fn open_question(&self, item: i64) -> (i64, String) {
        sqlx::query_as(
            "select id, question from human_issues where item_id = $1 and status = 'open'",
        )
        .bind(item)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    pub fn remote_git(&self) -> Git {
        Git::new(&self.remote, Identity::default())
    }

    /// How many items are in each phase, as `phase=count` sorted by phase.
    pub async fn phase_counts(&self) -> Vec<String> {
        sqlx::query_scalar(
            "select phase::text || '=' || count(*) from work_items group by phase order by phase::text",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    /// Checks out every commit of main's first-parent history and runs `test_command`
    /// on it: main was never red.
    pub async fn assert_main_history_passes(&self, test_command: &str) -> usize {
        let remote = self.remote_git();
        let commits = remote
            .run(&["rev-list", "--first-parent", "main"])
            .await
            .unwrap();
        let mut checked = 0;
        for commit in commits.lines() {
            let tree = tempfile::tempdir().unwrap();
            let archive = std::process::Command::new("git")
                .args(["archive", commit])
                .current_dir(&self.remote)
                .output()
                .unwrap();
            assert!(archive.status.success());
            let mut untar = std::process::Command::new("tar")
                .args(["-x", "-C"])
                .arg(tree.path())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            untar
                .stdin
                .take()
                .unwrap()
                .write_all(&archive.stdout)
                .unwrap();
            assert!(untar.wait().unwrap().success());
            let run = std::process::Command::new("/bin/sh")
                .args(["-c", test_command])
                .current_dir(tree.path())
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "main's commit {commit} fails `{test_command}`: {}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            );
            checked += 1;
        }
        checked
    }
}

/// A story that is its own spec: criteria and the test command.
pub const GREETING: &str = "Greet the reader.\n\n## Acceptance criteria\n- hello.txt holds the word hello\n\n## Test command\n`grep -qx hello hello.txt`\n";

/// Claude Code's success result line.
pub const CLAUDE_OK: &str = r#"echo '{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.25,"permission_denials":[],"result":"done"}'"#;

/// The path of an agent CLI the tests run for real: `$DAMASCUS_<AGENT>_BIN`, else
/// `program` on PATH. A missing one fails the test with how to install it (the
/// version pinned in `tests/<version_file>`), unless `DAMASCUS_SKIP_<AGENT>` is set:
/// then `None`, after saying so.
pub fn installed_cli(program: &str, agent: &str, package: &str, version: &str) -> Option<PathBuf> {
    let upper = agent.to_uppercase();
    let found = match std::env::var_os(format!("DAMASCUS_{upper}_BIN")) {
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        }),
    };
    if found.is_none() {
        if std::env::var_os(format!("DAMASCUS_SKIP_{upper}")).is_some() {
            eprintln!("skipped: {program} is not installed and DAMASCUS_SKIP_{upper} is set");
            return None;
        }
        panic!(
            "{program} is not on PATH nor at DAMASCUS_{upper}_BIN; install it (npm install -g {package}@{}) or set DAMASCUS_SKIP_{upper}=1 to skip its tests",
            version.trim()
        );
    }
    found
}

/// A directory holding `program` as a link to `bin`, first on a PATH for the agent
/// (the agent's PATH is the worker's, which an `agent_env` PATH replaces).
pub fn path_with(setup: &Setup, program: &str, bin: &std::path::Path) -> String {
    let dir = setup.dir.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(program);
    if !link.exists() {
        std::os::unix::fs::symlink(bin, link).unwrap();
    }
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap()
    .to_string_lossy()
    .into_owned()
}
