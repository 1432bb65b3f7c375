//! The command line, as clap sees it. Values are checked here where clap can say what
//! is wrong (ranges, vocabularies); everything else is checked by the library.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};
use damascus_core::{ForgeKind, Phase, SpecMode};

#[derive(Debug, Parser)]
#[command(
    name = "damascus",
    version,
    about = "Takes software stories through spec, build, review and merge, on PostgreSQL.",
    long_about = None
)]
pub struct Args {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, ClapArgs)]
pub struct DatabaseArgs {
    /// PostgreSQL to use. Without it, damascus runs its own private cluster in the data directory.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where damascus keeps its embedded cluster, worktrees and logs [default: ~/.local/share/damascus].
    #[arg(long, global = true, env = "DAMASCUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations (a second run does nothing).
    Init,
    /// Show the database in use, its schema version, items per phase and the queue.
    Status,
    /// Manage projects: the repositories damascus works on.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Add a story (Markdown: a '# Title' line, then the text) as a work item in phase spec.
    Ingest(IngestArgs),
    /// List work items.
    Items(ItemsArgs),
    /// Show one work item with its events, questions and costs.
    Show {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Control the embedded PostgreSQL cluster.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Register a repository as a project.
    Add(ProjectAddArgs),
    /// List projects with their item counts.
    List,
}

#[derive(Debug, ClapArgs)]
pub struct ProjectAddArgs {
    /// Lowercase letters, digits, '-' and '_' (e.g. billing-api).
    pub name: String,
    /// The git repository: a URL or a local path.
    #[arg(long)]
    pub repo: String,
    #[arg(long, default_value = "main")]
    pub default_branch: String,
    /// Where pull requests live: local, gitea or github.
    #[arg(long, default_value = "local", value_parser = parse_forge)]
    pub forge: ForgeKind,
    /// The repository on the forge, as owner/name (gitea, github).
    #[arg(long)]
    pub forge_repo: Option<String>,
    /// The forge's base URL (gitea).
    #[arg(long)]
    pub forge_url: Option<String>,
    /// The command that decides whether a change passes review (e.g. "cargo test").
    #[arg(long)]
    pub test_command: Option<String>,
    /// refine (a model writes the spec) or passthrough (the story is the spec).
    #[arg(long, default_value = "refine", value_parser = parse_spec_mode)]
    pub spec_mode: SpecMode,
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub max_attempts_per_phase: i32,
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub max_attempts_total: i32,
    /// Stop spending on an item past this many USD.
    #[arg(long, allow_negative_numbers = true)]
    pub cost_budget_usd: Option<f64>,
    /// A document the spec-refiner reads with every story (repeatable).
    #[arg(long = "context-doc")]
    pub context_docs: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct IngestArgs {
    /// The project the story belongs to.
    #[arg(long, short)]
    pub project: String,
    /// A Markdown file, or - for standard input.
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// Use this title; the whole file becomes the body.
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct ItemsArgs {
    #[arg(long, short)]
    pub project: Option<String>,
    #[arg(long, value_parser = parse_phase)]
    pub phase: Option<Phase>,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: i64,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Start the embedded cluster (initialising it the first time) and print how to reach it.
    Start,
    /// Stop the embedded cluster.
    Stop,
}

fn parse_forge(s: &str) -> Result<ForgeKind, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_spec_mode(s: &str) -> Result<SpecMode, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
