//! One module per command. Each takes plain settings, calls the libraries and prints.

pub mod agents;
mod bench;
pub mod completions;
mod config;
mod db;
mod demo;
mod human;
mod ingest;
mod init;
mod items;
mod logs;
mod mcp;
mod operator;
mod project;
mod serve;
mod status;
mod token;
pub mod webhook;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use damascus_db::{Database, PoolSettings, Target};

use crate::cli::{
    BenchCommand, Command, ConfigCommand, DbCommand, ItemCommand, ProjectCommand, TokenCommand,
};

pub async fn dispatch(
    command: Command,
    target: Target,
    data_dir: PathBuf,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init => init::run(&target).await,
        Command::Status { json } => status::run(&target, json).await,
        Command::Project(ProjectCommand::Add(args)) => project::add(&target, *args).await,
        Command::Project(ProjectCommand::List { json }) => project::list(&target, json).await,
        Command::Ingest(args) => ingest::run(&target, args).await,
        Command::Items(args) => items::list(&target, args).await,
        Command::Show { id, json } => items::show(&target, id, json).await,
        Command::Run(args) => serve::run(&target, &data_dir, *args).await,
        Command::Config(ConfigCommand::Check(args)) => {
            config::check(&target, &data_dir, config.as_deref(), *args)
        }
        Command::Item(ItemCommand::Cancel { id }) => operator::cancel(&target, id).await,
        Command::Item(ItemCommand::Approve { id }) => operator::approve(&target, id).await,
        Command::Item(ItemCommand::Retry { id }) => operator::retry(&target, id).await,
        Command::Project(ProjectCommand::Pause { name }) => operator::pause(&target, &name).await,
        Command::Project(ProjectCommand::Resume { name }) => operator::resume(&target, &name).await,
        Command::Logs { id, follow } => logs::run(&target, &data_dir, id, follow).await,
        Command::Mcp => mcp::run(&target).await,
        Command::Serve(args) => serve::serve(&target, &data_dir, args).await,
        Command::Webhook(command) => webhook::run(&target, command).await,
        Command::Token(TokenCommand::Create { name }) => token::create(&target, &name).await,
        Command::Token(TokenCommand::List { json }) => token::list(&target, json).await,
        Command::Token(TokenCommand::Revoke { name }) => token::revoke(&target, &name).await,
        Command::Worker(args) => worker::worker(&target, &data_dir, *args).await,
        Command::Cycle(args) => worker::cycle(&target, &data_dir, *args).await,
        Command::Demo => demo::run(&target, &data_dir).await,
        Command::Answer { issue, text, by } => human::answer(&target, issue, &text, &by).await,
        Command::Db(DbCommand::Start) => db::start(&target).await,
        Command::Db(DbCommand::Stop) => db::stop(&target),
        Command::Bench(BenchCommand::Queue(args)) => bench::queue(&target, args).await,
        Command::Completions { shell } => return completions::print(shell),
        Command::Agents { json } => agents::list(json).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as pretty JSON on stdout, the only thing a `--json` command prints there.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Opens the database for a command that needs the schema in place.
async fn open_migrated(target: &Target) -> anyhow::Result<Database> {
    open_migrated_with(target, PoolSettings::default()).await
}

async fn open_migrated_with(target: &Target, settings: PoolSettings) -> anyhow::Result<Database> {
    let db = damascus_db::open(target, settings).await?;
    damascus_db::migrate::require_current(&db.pool).await?;
    Ok(db)
}

/// A pool for a worker process: one connection per running phase (a phase reads and
/// writes its item), plus the worker's own six (listener, claims, group commits,
/// keep-alive, reaper, one spare)
/// and `extra` for what else the process serves. Without `--concurrency` the cap in
/// the database applies; 16 phases are assumed then.
fn worker_pool_settings(concurrency: Option<u32>, extra: u32) -> PoolSettings {
    PoolSettings {
        max_connections: concurrency.unwrap_or(16) + 6 + extra,
        ..PoolSettings::default()
    }
}
