//! Fixtures: a project on a bare repository, scripted agents, and running the queue
//! with the loops until nothing is runnable.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, Uri};
use damascus_core::transcript::TranscriptEvent;
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
        Setup::in_dir(tempfile::tempdir().unwrap(), files).await
    }

    /// A setup in `dir` (the data dir, HOMEs and worktrees go below it) whose
    /// repository's main holds `files`.
    pub async fn in_dir(dir: tempfile::TempDir, files: &[(&str, &str)]) -> Setup {
        let db = TestDatabase::new().await;
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

    /// Asserts the item is blocked, and returns the question it asks a person.
    pub async fn blocked_question(&self, item: i64) -> String {
        assert_eq!(self.phase(item).await, "blocked");
        self.open_question(item).await.1
    }

    pub fn remote_git(&self) -> Git {
        Git::new(&self.remote, Identity::default())
    }

    /// What `path` holds on the remote's main.
    pub async fn main_file(&self, path: &str) -> String {
        self.remote_git()
            .run(&["show", &format!("main:{path}")])
            .await
            .unwrap()
    }

    /// How many rows the cost ledger holds for an item, of any source.
    pub async fn ledger_rows(&self, item: i64) -> i64 {
        sqlx::query_scalar("select count(*) from cost_ledger where item_id = $1")
            .bind(item)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
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
    let found = find_cli(program, agent);
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

/// Where an agent CLI is: `$DAMASCUS_<AGENT>_BIN` when that is set (and a file), else
/// `program` on PATH.
pub fn find_cli(program: &str, agent: &str) -> Option<PathBuf> {
    match std::env::var_os(format!("DAMASCUS_{}_BIN", agent.to_uppercase())) {
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        }),
    }
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

/// Ingests the greeting story and runs the loops until it merges, five cycles at the
/// most (a failed review and a rebuild take more than one); asserts it merged, and
/// returns the item.
pub async fn greeting_until_merged(setup: &Setup, config: LoopsConfig) -> i64 {
    let item = setup.ingest("Greeting", GREETING).await;
    for _ in 0..5 {
        setup.cycle_with(config.clone()).await;
        if setup.phase(item).await == "merged" {
            break;
        }
    }
    assert_eq!(
        setup.phase(item).await,
        "merged",
        "{:?}; last failure: {:?}",
        setup.steps(item).await,
        damascus_db::items::last_failure(&setup.db.pool, item).await
    );
    item
}

/// Serves a scripted server on a free local port, in the background; its address.
pub async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A request's header as text, empty when it is absent.
pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A request a scripted model did not expect, shown in the test's output (so a new need
/// of a CLI is seen); `METHOD URI`, for the server to keep.
pub fn unexpected(method: &Method, uri: &Uri, body: &[u8]) -> String {
    let shown = format!("{method} {uri}");
    eprintln!(
        "scripted model: unexpected request {shown}: {}",
        String::from_utf8_lossy(body)
    );
    shown
}

/// A file an item's runs left in its log directory (`data/logs/<item>/<file>`).
pub fn log_path(setup: &Setup, item: i64, file: &str) -> PathBuf {
    setup.dir.path().join(format!("data/logs/{item}/{file}"))
}

/// The raw log of an item's run `name` (`build-1`), empty when there is none.
pub fn run_log(setup: &Setup, item: i64, name: &str) -> String {
    std::fs::read_to_string(log_path(setup, item, &format!("{name}.log"))).unwrap_or_default()
}

/// The normalised transcript of an item's run `name` (`build-1`), beside its raw log.
pub fn transcript(setup: &Setup, item: i64, name: &str) -> Vec<TranscriptEvent> {
    let path = log_path(setup, item, &format!("{name}.transcript.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How a tool call's target names the file it acts on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The target is the file's name.
    Is(&'a str),
    /// The target is a path to the file.
    EndsWith(&'a str),
    /// The target mentions the file (a command that writes it).
    Contains(&'a str),
}

impl Target<'_> {
    fn matches(self, target: &str) -> bool {
        match self {
            Target::Is(file) => target == file,
            Target::EndsWith(file) => target.ends_with(file),
            Target::Contains(file) => target.contains(file),
        }
    }
}

/// What the transcript of a run that did its work shows.
pub struct Conversation<'a> {
    /// The model the first event names (`None`: any, or none).
    pub model: Option<&'a str>,
    /// Whether the first event names the session.
    pub session: bool,
    /// A call of this tool on `target`.
    pub tool: &'a str,
    pub target: Target<'a>,
    /// The turns the last event counts.
    pub turns: i64,
}

/// Asserts a run's conversation: it starts (with the session and model `want` asks
/// for), calls `want.tool` on its target, gets an ok tool result, and ends with an ok
/// result of `want.turns` turns. Prints the transcript, and returns its lines.
pub fn assert_conversation(events: &[TranscriptEvent], want: &Conversation) -> Vec<String> {
    use TranscriptEvent as E;
    let lines: Vec<String> = events.iter().map(E::line).collect();
    eprintln!("{}", lines.join("\n"));
    assert!(
        matches!(events.first(), Some(E::Started { session, model })
            if (!want.session || session.is_some())
                && want.model.is_none_or(|m| model.as_deref() == Some(m))),
        "it starts (session: {}, model: {:?}): {lines:#?}",
        want.session,
        want.model
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, E::ToolCall { tool, target, .. }
            if tool == want.tool && want.target.matches(target))),
        "a {} call on {:?}: {lines:#?}",
        want.tool,
        want.target
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, E::ToolResult { ok: true, .. })),
        "an ok tool result: {lines:#?}"
    );
    assert!(
        matches!(events.last(), Some(E::Result { ok: true, turns: Some(t), .. }) if *t == want.turns),
        "it ends ok after {} turns: {lines:#?}",
        want.turns
    );
    lines
}

/// An agent row of the cost ledger: model, tokens in (cached ones included), out,
/// cached, the price it was priced at, USD.
pub type AgentRow = (String, i64, i64, i64, Option<String>, f64);

/// The item's agent rows in the cost ledger, oldest first.
pub async fn agent_ledger(setup: &Setup, item: i64) -> Vec<AgentRow> {
    sqlx::query_as(
        "select model, tokens_in, tokens_out, tokens_cached, price, usd::float8 from cost_ledger
         where item_id = $1 and source = 'agent' order by id",
    )
    .bind(item)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap()
}

/// The item's one agent row in the cost ledger (asserts there is one).
pub async fn one_agent_row(setup: &Setup, item: i64) -> AgentRow {
    let rows = agent_ledger(setup, item).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].clone()
}

/// The item's `agent.session` events: whether the run resumed a session, and which.
pub async fn session_events(setup: &Setup, item: i64) -> Vec<(bool, String)> {
    sqlx::query_as(
        "select (payload->>'resumed')::boolean, payload->>'session' from events_outbox
         where item_id = $1 and kind = 'agent.session' order by id",
    )
    .bind(item)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap()
}

/// Asserts two runs: a fresh session (`what`: the agent's word for it), then the same
/// one resumed.
pub fn assert_resumed_once(sessions: &[(bool, String)], what: &str) {
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        !sessions[0].0 && sessions[1].0,
        "a fresh {what}, then the same one resumed: {sessions:?}"
    );
    assert_eq!(sessions[0].1, sessions[1].1);
}

/// The first of `requests` whose prompt (`prompt` reads it) carries the failure of
/// the previous attempt: a resumed run's. Asserts it says only what is new: that the
/// agent worked on the change before, and not the spec again.
pub fn resumed_request(
    requests: &[serde_json::Value],
    prompt: fn(&serde_json::Value) -> String,
) -> &serde_json::Value {
    let request = requests
        .iter()
        .find(|r| prompt(r).contains("previous attempt failed"))
        .expect("a request carried the failure");
    let prompt = prompt(request);
    assert!(
        prompt.contains("You worked on this change before"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("## Acceptance criteria"),
        "the spec is not sent again: {prompt}"
    );
    request
}
