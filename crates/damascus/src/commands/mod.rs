//! One module per command. Each takes plain settings, calls the libraries and prints.

mod db;
mod ingest;
mod init;
mod items;
mod project;
mod status;

use std::process::ExitCode;

use damascus_db::{Database, PoolSettings, Target};

use crate::cli::{Command, DbCommand, ProjectCommand};

pub async fn dispatch(command: Command, target: Target) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init => init::run(&target).await,
        Command::Status => status::run(&target).await,
        Command::Project(ProjectCommand::Add(args)) => project::add(&target, args).await,
        Command::Project(ProjectCommand::List) => project::list(&target).await,
        Command::Ingest(args) => ingest::run(&target, args).await,
        Command::Items(args) => items::list(&target, args).await,
        Command::Show { id } => items::show(&target, id).await,
        Command::Db(DbCommand::Start) => db::start(&target).await,
        Command::Db(DbCommand::Stop) => db::stop(&target),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the database for a command that needs the schema in place.
async fn open_migrated(target: &Target) -> anyhow::Result<Database> {
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    damascus_db::migrate::require_current(&db.pool).await?;
    Ok(db)
}
