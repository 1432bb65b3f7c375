//! `damascus status`: where the data lives and what the system is doing.

use damascus_db::cluster::StartOutcome;
use damascus_db::migrate::{self, SchemaState};
use damascus_db::{status, Origin, PoolSettings, Target};

pub async fn run(target: &Target) -> anyhow::Result<()> {
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
        "jobs       {} queued, {} leased or delayed",
        overview.jobs_ready, overview.jobs_leased_or_delayed
    );
    println!("questions  {} open", overview.open_human_issues);
    Ok(())
}
