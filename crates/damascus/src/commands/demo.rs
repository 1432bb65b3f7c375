//! `damascus demo`: the whole loop on this machine with nothing but PostgreSQL's
//! server binaries and git. A demo project on a local forge (a bare repository in the
//! data directory), two passthrough stories, and the scripted agent from
//! `examples/demo-agent.sh`: the first story is merged, the second fails its tests
//! until its budget runs out and ends blocked with a question for a person.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use damascus_core::{NewProject, Phase, ProjectName, SpecMode, Story};
use damascus_db::{events, items, migrate, projects, Database, DbError, PoolSettings, Target};
use damascus_git::{init_bare_with_files, Git, Identity};
use damascus_loops::{Loops, LoopsConfig};
use damascus_queue::{QueueConfig, WorkerPool};

const AGENT: &str = include_str!("../../../../examples/demo-agent.sh");

const HELLO_STORY: &str = "Greet whoever opens the repository.\n\n## Acceptance criteria\n- hello.txt holds the word hello\n\n## Test command\n`grep -qx hello hello.txt`\n";
const FAREWELL_STORY: &str = "Say goodbye as well.\n\n## Acceptance criteria\n- farewell.txt holds the word goodbye\n\n## Test command\n`grep -qx goodbye farewell.txt`\n";

pub async fn run(target: &Target, data_dir: &Path) -> anyhow::Result<()> {
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    migrate::apply(&db.pool).await?;
    println!("database: {}", db.origin.display_url());

    let demo_dir = data_dir.join("demo");
    std::fs::create_dir_all(&demo_dir)
        .with_context(|| format!("cannot create {}", demo_dir.display()))?;
    let remote = demo_dir.join("remote.git");
    let identity = Identity::default();
    if !remote.join("HEAD").exists() {
        init_bare_with_files(&remote, &[("README.md", "# Damascus demo\n")], &identity).await?;
    }
    let agent = demo_dir.join("demo-agent.sh");
    std::fs::write(&agent, AGENT)?;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))?;

    let mut project = NewProject::local(ProjectName::parse("demo")?, remote.to_string_lossy());
    project.spec_mode = SpecMode::Passthrough;
    project.agent = damascus_core::AgentKind::Command;
    project.agent_command = Some(vec![agent.to_string_lossy().into_owned()]);
    project.max_attempts_per_phase = 2;
    project.max_attempts_total = 5;
    project.agent_timeout_secs = 60;
    project.test_timeout_secs = 60;
    match projects::add_project(&db.pool, &project).await {
        Ok(_) | Err(DbError::ProjectExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    println!("project demo: local forge at {}", remote.display());

    let mut last_event = events::latest_id(&db.pool).await?;
    let name = ProjectName::parse("demo")?;
    let hello = items::ingest(
        &db.pool,
        &name,
        &Story::new("Say hello", HELLO_STORY)?,
        "demo",
    )
    .await?;
    let farewell = items::ingest(
        &db.pool,
        &name,
        &Story::new("Say goodbye", FAREWELL_STORY)?,
        "demo",
    )
    .await?;
    println!(
        "ingested item {} ({}) and item {} ({})\n",
        hello.id, hello.title, farewell.id, farewell.title
    );

    let loops = Loops::new(LoopsConfig {
        data_dir: data_dir.to_path_buf(),
        llm: None,
        identity: identity.clone(),
        agent_env: Vec::new(),
        claude_max_turns: 10,
        gitea_token: None,
        github_token: None,
        agent_user: None,
        git_timeout: damascus_git::DEFAULT_TIMEOUT,
        github_write_gap: damascus_loops::GITHUB_WRITE_GAP,
        head_wait: damascus_loops::DEFAULT_HEAD_WAIT,
        prices: damascus_core::prices::PriceTable::built_in(),
    })?;
    let queue = QueueConfig {
        concurrency: Some(2),
        poll_interval: Duration::from_millis(500),
        ..QueueConfig::default()
    };
    let workers = WorkerPool::start(db.pool.clone(), queue, Arc::new(loops)).await?;
    // Follow the run until both items are merged or waiting for a person.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last_event = print_events(&db, last_event).await?;
        let mut settled = true;
        for id in [hello.id, farewell.id] {
            let phase = items::get_item(&db.pool, id).await?.phase;
            settled &= phase.is_final() || phase == Phase::Blocked;
        }
        if settled || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let summary = workers.shutdown().await;
    print_events(&db, last_event).await?;

    println!("\n{summary}\n");
    let main = Git::new(&remote, identity);
    println!(
        "main of the demo repository now:\n{}",
        main.run(&["log", "--oneline", "--graph", "-6", "main"])
            .await?
    );
    println!(
        "{}\n",
        main.run(&["diff", "--stat", "main^1", "main"]).await?
    );
    for item in [hello.id, farewell.id] {
        let item = items::get_item(&db.pool, item).await?;
        println!("item {} ({}): {}", item.id, item.title, item.phase);
        for issue in items::human_issues_for_item(&db.pool, item.id).await? {
            if issue.answer.is_none() {
                println!("  question #{}: {}", issue.id, issue.question);
                println!(
                    "  answer it with: damascus answer {} \"Write farewell.txt with the single line goodbye.\"",
                    issue.id
                );
                println!("  then run it on: damascus cycle");
            }
        }
    }
    Ok(())
}

async fn print_events(db: &Database, mut last: i64) -> anyhow::Result<i64> {
    for event in events::after(&db.pool, last, 100).await? {
        last = event.id;
        let item = event
            .item_id
            .map(|i| format!("item {i}"))
            .unwrap_or_default();
        let p = &event.payload;
        let text = |key: &str| p[key].as_str().unwrap_or_default().to_owned();
        match event.kind.as_str() {
            "item.phase_changed" => {
                let reason = text("reason");
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                println!(
                    "{item}: {} -> {} [{}]{reason}",
                    text("from"),
                    text("to"),
                    text("verdict")
                );
            }
            "item.blocked" => println!("{item}: asks a person: {}", text("question")),
            "job.retry_scheduled" => println!(
                "{item}: retrying {} after: {}",
                text("phase"),
                text("reason")
            ),
            _ => {}
        }
    }
    Ok(last)
}
