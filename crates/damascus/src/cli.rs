//! The command line, as clap sees it. Values are checked here where clap can say what
//! is wrong (ranges, vocabularies); everything else is checked by the library.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};
use damascus_core::{
    AgentKind, BranchUpdate, ForgeKind, LockName, MergeMethod, Phase, Sandbox, SpecMode,
};

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
    /// A TOML configuration file; its keys are the settings' names (see docs/OPERATIONS.md).
    /// Flags and environment variables override it.
    #[arg(long, global = true, env = "DAMASCUS_CONFIG")]
    pub config: Option<PathBuf>,
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
    Status {
        /// Print the API's stats (GET /v1/stats) and the workers as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Manage projects: the repositories damascus works on.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Add a story (Markdown: a '# Title' line, then the text) as a work item in phase spec.
    Ingest(IngestArgs),
    /// List work items.
    Items(ItemsArgs),
    /// Operator controls for one item: cancel, retry.
    #[command(subcommand)]
    Item(ItemCommand),
    /// The agent's and the tests' output for an item (live while it runs with --follow).
    Logs {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Keep printing new output until the item is merged, blocked or cancelled.
        #[arg(long, short)]
        follow: bool,
    },
    /// Show one work item with its events, questions and costs.
    Show {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Print the item as the API answers it (GET /v1/items/ID): JSON with its
        /// events, questions, costs, gates and merge queue place.
        #[arg(long)]
        json: bool,
    },
    /// Show the whole loop on this machine: a demo project on a local forge, two
    /// stories, a scripted agent; one is merged, one ends blocked with a question.
    Demo,
    /// The single-process entry point: migrations, the worker pool and the HTTP API
    /// (with the web UI), until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
    /// Serve the HTTP API and web UI only (no workers).
    Serve(ServeArgs),
    /// The MCP server on stdio, for Claude Desktop, Claude Code or any MCP client
    /// (tools: ingest_story, answer_question, list_items, get_item, list_human_issues).
    Mcp,
    /// Check the configuration (file, environment, flags) and print it, secrets masked.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Register webhooks, see their deliveries, send again what failed.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Run the worker pool: claim jobs and run phases until SIGTERM or Ctrl-C.
    Worker(Box<WorkerArgs>),
    /// Run every job that is runnable now (and what they make runnable), then exit.
    Cycle(Box<CycleArgs>),
    /// Answer a person's question; the item resumes in the phase it left.
    Answer {
        /// The question's id, as `damascus show ITEM` lists it (#N).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        issue: i64,
        /// The answer; it is added to the item's next prompt.
        text: String,
        /// Who answers (recorded with the answer).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Control the embedded PostgreSQL cluster.
    #[command(subcommand)]
    Db(DbCommand),
    /// Measure the product: `bench queue` (use a release build).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The coding agents this build can run: whether each is installed here, its
    /// version, the variables it gets and how its spend is capped.
    Agents {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. damascus completions bash >
    /// /etc/bash_completion.d/damascus).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Throughput and pickup latency of no-op phases through the real worker pool,
    /// against the best single-row commit rate of the same server (this bench's client
    /// or pgbench, whichever is higher).
    Queue(BenchQueueArgs),
}

#[derive(Debug, ClapArgs)]
pub struct BenchQueueArgs {
    /// Backlog sizes to run, comma-separated (each in a fresh scratch database).
    #[arg(long, value_delimiter = ',', default_values_t = [2000u64, 50000], value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub jobs: Vec<u64>,
    /// Worker pool size; the commit-rate baseline tries this many connections, twice
    /// and four times as many (more while they still pay), and keeps the best.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Bytes of story text each job's phase reads.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub payload_bytes: u32,
    /// Items made runnable one at a time for the latency figures.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub latency_samples: u32,
    /// Seconds of single-row inserts for each client count of the commit-rate baseline
    /// (this bench's client, then pgbench when installed).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub commit_seconds: u32,
    /// Times to measure every backlog and the commit rate; the figures are the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

#[derive(Debug, ClapArgs)]
pub struct QueueArgs {
    /// The GLOBAL cap: phases running at once across every worker on this database.
    /// Giving it sets it for all workers; without it the cap in force stays (4 at first).
    #[arg(long, env = "DAMASCUS_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Seconds a claim lasts without a keep-alive (a killed worker's job runs again after this).
    #[arg(long, env = "DAMASCUS_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,
    /// Seconds between safety-net polls (NOTIFY wakes workers sooner).
    #[arg(long, env = "DAMASCUS_POLL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_secs: u64,
    /// On SIGTERM, seconds running phases may take to finish before their jobs are released.
    #[arg(long, env = "DAMASCUS_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub grace_secs: u64,
}

#[derive(Debug, ClapArgs)]
pub struct LoopsArgs {
    /// OpenAI-compatible endpoint for refining specs (e.g. http://litellm:4000/v1).
    #[arg(long, env = "DAMASCUS_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// The model name the endpoint knows.
    #[arg(long, env = "DAMASCUS_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "DAMASCUS_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Seconds one request to the endpoint may take.
    #[arg(long, env = "DAMASCUS_LLM_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub llm_timeout_secs: u64,
    /// Price of a model in USD per million tokens, MODEL=INPUT/OUTPUT (repeatable), used
    /// when the endpoint sends no cost header.
    #[arg(long = "llm-price", env = "DAMASCUS_LLM_PRICES", value_delimiter = ',')]
    pub llm_prices: Vec<String>,
    /// Author of the builder's commits and of merges, as "Name <email>".
    #[arg(
        long,
        env = "DAMASCUS_GIT_AUTHOR",
        default_value = "Damascus <damascus@localhost>"
    )]
    pub git_author: String,
    /// --max-turns for Claude Code, the default agent.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub claude_max_turns: u32,
    /// Run the agent and the tests as this unprivileged user, who cannot read the
    /// worker's environment, the cluster or other items' idle worktrees (the worker
    /// must run as root or hold CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_KILL).
    #[arg(long, env = "DAMASCUS_AGENT_USER")]
    pub agent_user: Option<String>,
    /// The price of a model whose agent reports tokens but not dollars (Codex, Gemini
    /// CLI, OpenCode), MODEL=INPUT/CACHED/OUTPUT in USD per million tokens (repeatable);
    /// overrides or adds to data/prices.toml.
    #[arg(
        long = "agent-price",
        env = "DAMASCUS_AGENT_PRICES",
        value_delimiter = ','
    )]
    pub agent_prices: Vec<String>,
    /// A variable of the worker's environment the agent and the tests also get
    /// (repeatable). Each agent's own key and base-URL variables always pass to it, and
    /// never to another agent (`damascus agents` names them). Damascus's own settings (DATABASE_URL, DAMASCUS_*,
    /// PG*) are refused.
    #[arg(long = "agent-env", env = "DAMASCUS_AGENT_ENV", value_delimiter = ',')]
    pub agent_env: Vec<String>,
    /// The longest one git command (clone, fetch, push) may run before it is killed and
    /// its phase retried.
    #[arg(long, env = "DAMASCUS_GIT_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub git_timeout_secs: u64,
}

#[derive(Debug, ClapArgs)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub loops: LoopsArgs,
}

#[derive(Debug, ClapArgs)]
pub struct CycleArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub loops: LoopsArgs,
}

#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; 0.0.0.0:8080 in a container).
    #[arg(long, env = "DAMASCUS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Serve /metrics without a token.
    #[arg(long, env = "DAMASCUS_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Require a token for /healthz too.
    #[arg(long)]
    pub private_health: bool,
}

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Do not apply migrations at start.
    #[arg(long, env = "DAMASCUS_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Webhook URLs that receive every event of the outbox (comma-separated).
    #[arg(
        long = "webhook",
        env = "DAMASCUS_WEBHOOKS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,
    /// Days to keep delivered events, and the agents' and tests' logs.
    #[arg(long, env = "DAMASCUS_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub retention_days: u32,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub loops: LoopsArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate every setting `damascus run` would use and print the effective values.
    Check(Box<RunArgs>),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is kept.
    Create {
        /// Letters, digits, '.', '_' and '-' (e.g. ci-bot).
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Print the tokens as a JSON array (names and use; never a secret or its hash).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name.
    Revoke {
        /// The token's name, as `damascus token list` shows it.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register a webhook: every event (or those of --event) is POSTed to URL, signed
    /// (Standard Webhooks), by every process that runs `damascus run`.
    Add {
        /// Lowercase letters, digits, '.', '_' and '-' (e.g. chat).
        name: String,
        /// http:// or https:// URL.
        url: String,
        /// The signing secret, whsec_ and base64 (default: a new random one).
        #[arg(long)]
        secret: Option<String>,
        /// Only events of this kind (repeatable; e.g. item.blocked).
        #[arg(long = "event")]
        events: Vec<String>,
        /// Attempts per event before its delivery is dead (1 to 100).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=100))]
        max_attempts: i32,
    },
    /// Each webhook with its deliveries: pending, retrying, dead, delivered.
    List {
        /// Print the webhooks as the API lists them (GET /v1/webhooks): JSON, with each
        /// URL's host only and no secret.
        #[arg(long)]
        json: bool,
    },
    /// A webhook's URL and signing secret.
    Show {
        /// The webhook's name, as `damascus webhook list` shows it.
        name: String,
    },
    /// Remove a webhook and its deliveries.
    Remove {
        /// The webhook's name, as `damascus webhook list` shows it.
        name: String,
    },
    /// Send a signed `webhook.test` event to a webhook now and print its answer.
    Test {
        /// The webhook's name, as `damascus webhook list` shows it.
        name: String,
    },
    /// Send a webhook's dead deliveries again (or, with --since or --event, delivered
    /// ones too, and events it never had).
    Redrive {
        /// The webhook's name, as `damascus webhook list` shows it.
        name: String,
        /// Every event written at or after this time (RFC 3339, e.g.
        /// 2026-12-01T00:00:00Z).
        #[arg(long, conflicts_with = "event")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// This event.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        event: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Register a repository as a project.
    Add(Box<ProjectAddArgs>),
    /// List projects with their item counts.
    List {
        /// Print the projects as a JSON array (settings and item counts; no credentials).
        #[arg(long)]
        json: bool,
    },
    /// Start no new phase for the project's items; running phases finish.
    Pause {
        /// The project's name, as `damascus project list` shows it.
        name: String,
    },
    /// Let the project's items run again.
    Resume {
        /// The project's name, as `damascus project list` shows it.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// Cancel an item; a phase running for it is stopped and its processes killed.
    Cancel {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Approve an item's spec, so that its build starts (projects with --require-approval).
    Approve {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Send a blocked item back into the phase it left, with a fresh attempt budget.
    Retry {
        /// The item's id, as `damascus items` lists it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

#[derive(Debug, ClapArgs)]
pub struct ProjectAddArgs {
    /// Lowercase letters, digits, '-' and '_' (e.g. billing-api).
    pub name: String,
    /// The git repository: a URL or a local path.
    #[arg(long)]
    pub repo: String,
    /// The branch stories are merged into.
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
    /// Attempts at one phase an item may take before it is blocked for a person.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub max_attempts_per_phase: i32,
    /// Attempts at all phases an item may take before it is blocked for a person.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub max_attempts_total: i32,
    /// Stop spending on an item past this many USD.
    #[arg(long, allow_negative_numbers = true)]
    pub cost_budget_usd: Option<f64>,
    /// How the forge merges pull requests: merge, squash or rebase (Gitea, GitHub).
    #[arg(long, default_value = "merge", value_parser = parse_merge_method)]
    pub merge_method: MergeMethod,
    /// A person approves each spec (damascus item approve ID) before its build starts.
    #[arg(long)]
    pub require_approval: bool,
    /// How many queued items the merge queue tests and merges together (1 to 32); a
    /// failing batch is bisected to find the item that broke it.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true)]
    pub merge_batch_size: i32,
    /// How the merge queue brings a branch that fell behind up to date: merge (the
    /// default branch into it) or rebase (it onto the default branch).
    #[arg(long, default_value = "merge", value_parser = parse_branch_update)]
    pub branch_update: BranchUpdate,
    /// Where the agent and the tests run: none (child processes with an allow-listed
    /// environment and a HOME of their own) or bwrap (also in a bubblewrap namespace:
    /// only the worktree and that HOME writable, the data directory hidden; needs
    /// bubblewrap, apt-get install bubblewrap).
    #[arg(long, default_value = "none", value_parser = parse_sandbox)]
    pub sandbox: Sandbox,
    /// Each answer to a question raises the item's total attempt budget, when it must,
    /// to at least this many full rounds from where it resumes to merged (1 to 10).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub rounds_per_answer: i32,
    /// Stop spending on the project's items past this many USD per UTC day.
    #[arg(long, allow_negative_numbers = true)]
    pub daily_cost_budget_usd: Option<f64>,
    /// A document the spec-refiner reads with every story (repeatable).
    #[arg(long = "context-doc")]
    pub context_docs: Vec<String>,
    /// The coding agent: claude (Claude Code), codex, gemini (Gemini CLI), opencode, or
    /// command (your own program, --agent-command) [default: command when
    /// --agent-command is given, else the configuration file's project_defaults
    /// (DAMASCUS_AGENT, _AGENT_MODEL, _AGENT_ARGS), else claude]. `damascus agents`
    /// lists them and which are installed.
    #[arg(long, value_parser = parse_agent)]
    pub agent: Option<AgentKind>,
    /// The model the agent uses (e.g. gpt-5-codex, gemini-2.5-pro, openai/gpt-5); a
    /// project with a cost cap whose agent reports only tokens needs a priced one.
    #[arg(long)]
    pub agent_model: Option<String>,
    /// An argument added to the agent's command line after Damascus's own
    /// (repeatable; e.g. --agent-arg=--verbose).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// The command agent: a program and its arguments, split like a shell would split
    /// them but never run by a shell.
    #[arg(long)]
    pub agent_command: Option<String>,
    /// Seconds the agent may run per build.
    #[arg(long, default_value_t = 1800, allow_negative_numbers = true)]
    pub agent_timeout_secs: i32,
    /// Seconds the test command may run per review.
    #[arg(long, default_value_t = 900, allow_negative_numbers = true)]
    pub test_timeout_secs: i32,
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
    /// Start only after this item is merged (repeatable).
    #[arg(long = "depends-on", value_parser = clap::value_parser!(i64).range(1..))]
    pub depends_on: Vec<i64>,
    /// Hold this named lock through review: items sharing a lock never review or merge
    /// at the same time (repeatable; e.g. --lock db-schema).
    #[arg(long = "lock", value_parser = parse_lock_name)]
    pub locks: Vec<LockName>,
}

#[derive(Debug, ClapArgs)]
pub struct ItemsArgs {
    /// Only this project's items.
    #[arg(long, short)]
    pub project: Option<String>,
    /// Only items in this phase: intake, spec, build, review, merged, blocked or cancelled.
    #[arg(long, value_parser = parse_phase)]
    pub phase: Option<Phase>,
    /// At most this many items, in id order (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,
    /// Skip this many items first (with --limit, pages through the list).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: i64,
    /// Print the items as the API lists them (GET /v1/items): JSON
    /// {"items", "limit", "offset"}.
    #[arg(long)]
    pub json: bool,
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

fn parse_merge_method(s: &str) -> Result<MergeMethod, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_branch_update(s: &str) -> Result<BranchUpdate, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_agent(s: &str) -> Result<AgentKind, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_sandbox(s: &str) -> Result<Sandbox, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    s.parse()
        .map_err(|e: damascus_core::UnknownVariant| e.to_string())
}

fn parse_lock_name(s: &str) -> Result<LockName, String> {
    LockName::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    /// Every argument of every subcommand says what it is for in `--help`.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                // clap's own --help and --version carry clap's text.
                if matches!(arg.get_id().as_str(), "help" | "version") {
                    continue;
                }
                let help = arg
                    .get_help()
                    .or(arg.get_long_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Args::command(), "damascus", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without a help line: {}",
            missing.join(", ")
        );
    }
}
