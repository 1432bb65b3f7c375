//! `damascus status`: where the data lives and what the system is doing; `--json`
//! prints the API's stats and the workers.

use damascus_db::cluster::StartOutcome;
use damascus_db::migrate::{self, SchemaState};
use damascus_db::{status, Origin, PoolSettings, Target};

use crate::commands::{open_migrated, print_json};
use crate::table;

pub async fn run(target: &Target, json: bool) -> anyhow::Result<()> {
    if json {
        return print_stats(target).await;
    }
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    match &db.origin {
        Origin::Url { redacted } => println!("database   {redacted} (DATABASE_URL)"),
        Origin::Embedded {
            layout,
            started,
            url,
        } => {
            let how = match started {
                StartOutcome::AlreadyRunning => "running",
                StartOutcome::Started { initialized: true } => "created and started now",
                StartOutcome::Started { initialized: false } => "started now",
            };
            println!("database   embedded PostgreSQL cluster ({how})");
            println!("  url      {url}");
            println!("  data     {}", layout.data_dir.display());
            println!(
                "  cluster  {} (server runs as user {})",
                layout.pgdata.display(),
                layout.server_user.name
            );
            println!("  socket   {}", layout.socket_dir.display());
            println!(
                "  psql     {}",
                layout.psql_hint(damascus_db::connect::EMBEDDED_DATABASE)
            );
            println!("  log      {}", layout.log_file.display());
            if let Some(note) = &layout.placement_note {
                println!("  note     {note}");
            }
            println!(
                "  stop     damascus db stop (it keeps running for psql and the next command)"
            );
        }
    }
    let state = migrate::schema_state(&db.pool).await?;
    match state {
        SchemaState::Empty => {
            println!("schema     not initialized; run: damascus init");
            return Ok(());
        }
        SchemaState::Current { version } => println!("schema     version {version} (up to date)"),
        SchemaState::Behind { applied, pending } => {
            println!(
                "schema     version {applied}, {pending} migrations pending; run: damascus init"
            );
            return Ok(());
        }
        SchemaState::Ahead { applied } => {
            println!(
                "schema     version {applied}, newer than this damascus ({}); upgrade damascus",
                migrate::latest_version()
            )
        }
    }
    let overview = status::overview(&db.pool).await?;
    println!("projects   {}", overview.projects);
    let phases: Vec<String> = overview
        .items_per_phase
        .iter()
        .map(|(phase, n)| format!("{phase} {n}"))
        .collect();
    println!("items      {}", phases.join(", "));
    println!(
        "jobs       {} queued, {} running (global cap {}), {} waiting to retry, {} dead",
        overview.jobs_queued,
        overview.jobs_running,
        overview.concurrency,
        overview.jobs_retry_wait,
        overview.jobs_dead
    );
    for wait in damascus_db::forge_waits::all_active(&db.pool).await? {
        println!(
            "forge      waiting for {}'s rate limit until {} ({})",
            wait.host,
            wait.until.format("%H:%M:%S UTC"),
            wait.reason
        );
    }
    println!("questions  {} open", overview.open_human_issues);
    println!(
        "events     {} deliveries to webhooks retrying, {} dead{}",
        overview.events_retrying,
        overview.events_dead,
        if overview.events_dead > 0 {
            " (see damascus webhook list; send them again with: damascus webhook redrive NAME)"
        } else {
            ""
        }
    );
    for w in damascus_db::webhooks::list(&db.pool).await? {
        println!(
            "  webhook {}: {} pending, {} retrying, {} dead{}",
            w.webhook.name,
            w.pending,
            w.retrying,
            w.dead,
            w.oldest_undelivered_secs
                .map(|s| format!(", oldest undelivered {s:.0} s"))
                .unwrap_or_default()
        );
    }

    let workers = status::workers(&db.pool).await?;
    println!(
        "\nworkers ({} live)",
        workers.iter().filter(|w| w.alive).count()
    );
    if workers.is_empty() {
        println!("  none; start one with: damascus worker --concurrency N");
    } else {
        let rows: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                let state = match (w.alive, w.stopping) {
                    (false, _) => "silent",
                    (true, true) => "stopping",
                    (true, false) => "live",
                };
                vec![
                    w.host.clone(),
                    w.pid.to_string(),
                    state.to_owned(),
                    format!("{}/{}", w.running, w.concurrency),
                    w.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    w.heartbeat_at.format("%H:%M:%S").to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            indent(&table::render(
                &["HOST", "PID", "STATE", "RUNNING", "STARTED", "HEARTBEAT"],
                &rows
            ))
        );
    }

    let running = status::running_jobs(&db.pool).await?;
    if !running.is_empty() {
        println!("\nrunning");
        let rows: Vec<Vec<String>> = running
            .iter()
            .map(|r| {
                vec![
                    r.item_id
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.project.clone().unwrap_or_default(),
                    r.phase.map(|p| p.to_string()).unwrap_or_default(),
                    r.attempt.map(|a| a.to_string()).unwrap_or_default(),
                    r.worker.clone(),
                    r.claimed_at
                        .map(|t| t.format("%H:%M:%S").to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            indent(&table::render(
                &["ITEM", "PROJECT", "PHASE", "ATTEMPT", "WORKER", "SINCE"],
                &rows
            ))
        );
    }

    let groups = status::queue_groups(&db.pool).await?;
    if !groups.is_empty() {
        println!("\nqueue by project and phase");
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.project.clone(),
                    g.phase.clone(),
                    g.state.clone(),
                    g.jobs.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            indent(&table::render(
                &["PROJECT", "PHASE", "STATE", "JOBS"],
                &rows
            ))
        );
    }
    let queued = damascus_db::merge_queue::list(&db.pool).await?;
    if !queued.is_empty() {
        println!("\nmerge queues (position 1 is the head; a batch is named by its head)");
        let rows: Vec<Vec<String>> = queued
            .iter()
            .map(|q| {
                vec![
                    format!("{} {}", q.repository, q.base_branch),
                    format!("{}/{}", q.position, q.length),
                    q.item_id.to_string(),
                    q.project.clone(),
                    q.state.to_string(),
                    q.state_since.format("%H:%M:%S").to_string(),
                    q.batch_head.map(|h| h.to_string()).unwrap_or_default(),
                    q.title.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            indent(&table::render(
                &["QUEUE", "POS", "ITEM", "PROJECT", "STATE", "SINCE", "BATCH", "TITLE"],
                &rows
            ))
        );
    }
    let locks = status::held_locks(&db.pool).await?;
    if !locks.is_empty() {
        println!("\nnamed locks");
        let rows: Vec<Vec<String>> = locks
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.item_id.to_string(),
                    l.acquired_at.format("%H:%M:%S").to_string(),
                    l.waiting.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            indent(&table::render(
                &["LOCK", "HELD BY ITEM", "SINCE", "WAITING"],
                &rows
            ))
        );
    }
    println!("\nin psql: select * from damascus_queue; select * from damascus_workers; select * from damascus_items; select * from damascus_merge_queue; select * from named_locks;");
    Ok(())
}

/// `status --json`: the API's stats (`GET /v1/stats`) with the workers added.
async fn print_stats(target: &Target) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let mut stats = damascus_api::views::stats(&db.pool).await?;
    let workers = damascus_api::views::workers(&db.pool).await?;
    stats
        .as_object_mut()
        .expect("the stats are a JSON object")
        .insert("workers".into(), serde_json::to_value(workers)?);
    print_json(&stats)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
