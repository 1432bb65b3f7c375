//! What a project is made of before it is stored, and the checks that keep a bad
//! configuration from reaching the loops.

use crate::prices::PriceTable;
use crate::{AgentKind, BranchUpdate, ForgeKind, MergeMethod, ProjectName, Sandbox, SpecMode};

/// The upper bound on attempt budgets: termination is guaranteed, so budgets are finite
/// and small enough that a runaway item is noticed.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct NewProject {
    pub name: ProjectName,
    /// A URL or a local path of the git repository the items change.
    pub repository: String,
    pub default_branch: String,
    pub forge_kind: ForgeKind,
    /// `owner/name` on Gitea or GitHub; unused by the local forge.
    pub forge_repo: Option<String>,
    /// The forge's base URL (e.g. `https://gitea.example.com`); required for Gitea.
    pub forge_url: Option<String>,
    pub test_command: Option<String>,
    pub spec_mode: SpecMode,
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
    pub cost_budget_usd: Option<f64>,
    pub context_docs: Vec<String>,
    /// Which coding agent builds the items.
    pub agent: AgentKind,
    /// The model the agent is told to use (`--agent-model`); `None` leaves it to the
    /// agent's own default.
    pub agent_model: Option<String>,
    /// Arguments added to the agent's command line after Damascus's own.
    pub agent_args: Vec<String>,
    /// The argv of a `command` agent (`agent` is `Command` exactly when this is set).
    pub agent_command: Option<Vec<String>>,
    pub agent_timeout_secs: i32,
    pub test_timeout_secs: i32,
    /// What all the project's items may spend per UTC day, in USD.
    pub daily_cost_budget_usd: Option<f64>,
    pub merge_method: MergeMethod,
    /// A person approves each spec before its build starts.
    pub require_approval: bool,
    /// How many queued items the merge queue tests and merges together.
    pub merge_batch_size: i32,
    /// How the merge queue brings a branch up to date with the default branch.
    pub branch_update: BranchUpdate,
    /// Where the agent and the tests run.
    pub sandbox: Sandbox,
    /// Full rounds (from where an answer resumes to merged) each answer grants at least.
    pub rounds_per_answer: i32,
}

/// The most rounds one answer may grant.
pub const MAX_ROUNDS_PER_ANSWER: i32 = 10;

/// The largest merge queue batch: past it, a failing batch's bisection costs more test
/// runs than the batch saves.
pub const MAX_MERGE_BATCH_SIZE: i32 = 32;

/// The longest a phase's process may run: one day.
pub const MAX_TIMEOUT_SECS: i32 = 86_400;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectError {
    #[error("the repository is empty; give a git URL or a local path")]
    EmptyRepository,
    /// The URL is given with its credentials masked: the error is printed and logged.
    #[error("the repository URL {redacted} holds credentials (a password or a token before the @); remove them from the URL and give the token to the worker instead: DAMASCUS_GITEA_TOKEN or DAMASCUS_GITHUB_TOKEN for a Gitea or GitHub project (git gets it through GIT_ASKPASS), or an SSH URL and a key of the worker's user for any other remote")]
    CredentialsInRepository { redacted: String },
    #[error("default branch {0:?} is not a valid git branch name; use a name such as \"main\"")]
    BadBranch(String),
    #[error("forge kind {0} needs the repository on the forge as owner/name (e.g. \"acme/web\")")]
    MissingForgeRepo(ForgeKind),
    #[error("forge repository {0:?} is not of the form owner/name (e.g. \"acme/web\")")]
    BadForgeRepo(String),
    #[error("forge kind gitea needs the forge's base URL (e.g. \"https://gitea.example.com\")")]
    MissingForgeUrl,
    #[error("forge URL {0:?} must start with http:// or https://")]
    BadForgeUrl(String),
    #[error("{what} must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {given}")]
    BadAttempts { what: &'static str, given: i32 },
    #[error("the total attempt budget ({total}) is smaller than the per-phase budget ({per_phase}); raise the total or lower the per-phase budget")]
    TotalBelowPhase { total: i32, per_phase: i32 },
    #[error("cost budget must be a non-negative number of USD, got {0}")]
    BadCostBudget(f64),
    #[error("the test command is empty; give a command such as \"cargo test\" or leave it out")]
    EmptyTestCommand,
    #[error("the agent command is empty; give a program and its arguments, e.g. \"claude -p --output-format json\"")]
    EmptyAgentCommand,
    #[error("--agent command needs the program to run: give --agent-command \"PROGRAM ARGS…\" (its argv), or choose another agent ({})", agent_kinds())]
    CommandAgentWithoutArgv,
    #[error("--agent-command runs a program of your own, so the agent is \"command\", not {0:?}; leave --agent out (or say --agent command), or leave --agent-command out to run {0}")]
    AgentCommandForKind(AgentKind),
    #[error("--agent-model {0:?} is not a model name; give one such as \"gpt-5\" or \"openai/gpt-5\" (no spaces), or leave it out for the agent's default")]
    BadAgentModel(String),
    #[error("--agent-arg {0:?} is empty; leave it out")]
    EmptyAgentArg(String),
    #[error("a command agent takes its arguments in --agent-command; put {0:?} there instead of in --agent-arg")]
    ArgsForCommandAgent(String),
    #[error("the project has a cost cap, and agent {agent} reports tokens, not dollars, so Damascus prices them: {problem}")]
    UnpricedModel { agent: AgentKind, problem: String },
    #[error("{what} must be between 1 and {MAX_TIMEOUT_SECS} seconds, got {given}")]
    BadTimeout { what: &'static str, given: i32 },
    #[error("the merge batch size must be between 1 (test and merge one item at a time) and {MAX_MERGE_BATCH_SIZE}, got {0}")]
    BadMergeBatchSize(i32),
    #[error("the rounds an answer grants must be between 1 and {MAX_ROUNDS_PER_ANSWER}, got {0}")]
    BadRoundsPerAnswer(i32),
}

impl NewProject {
    /// A local-forge project with the default budgets.
    pub fn local(name: ProjectName, repository: impl Into<String>) -> NewProject {
        NewProject {
            name,
            repository: repository.into(),
            default_branch: "main".into(),
            forge_kind: ForgeKind::Local,
            forge_repo: None,
            forge_url: None,
            test_command: None,
            spec_mode: SpecMode::Refine,
            max_attempts_per_phase: 3,
            max_attempts_total: 10,
            cost_budget_usd: None,
            context_docs: Vec::new(),
            agent: AgentKind::Claude,
            agent_model: None,
            agent_args: Vec::new(),
            agent_command: None,
            agent_timeout_secs: 1800,
            test_timeout_secs: 900,
            daily_cost_budget_usd: None,
            merge_method: MergeMethod::Merge,
            require_approval: false,
            merge_batch_size: 4,
            branch_update: BranchUpdate::Merge,
            sandbox: Sandbox::None,
            rounds_per_answer: 1,
        }
    }

    pub fn validate(&self) -> Result<(), ProjectError> {
        if self.repository.trim().is_empty() {
            return Err(ProjectError::EmptyRepository);
        }
        if let Some(redacted) = credentials_in_url(&self.repository) {
            return Err(ProjectError::CredentialsInRepository { redacted });
        }
        if !is_branch_name(&self.default_branch) {
            return Err(ProjectError::BadBranch(self.default_branch.clone()));
        }
        if self.forge_kind != ForgeKind::Local {
            let repo = self
                .forge_repo
                .as_deref()
                .ok_or(ProjectError::MissingForgeRepo(self.forge_kind))?;
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2
                || parts
                    .iter()
                    .any(|p| p.is_empty() || p.contains(char::is_whitespace))
            {
                return Err(ProjectError::BadForgeRepo(repo.to_owned()));
            }
        }
        match (&self.forge_url, self.forge_kind) {
            (None, ForgeKind::Gitea) => return Err(ProjectError::MissingForgeUrl),
            (Some(url), _) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(ProjectError::BadForgeUrl(url.clone()))
            }
            _ => {}
        }
        for (what, given) in [
            ("per-phase attempt budget", self.max_attempts_per_phase),
            ("total attempt budget", self.max_attempts_total),
        ] {
            if !(1..=MAX_ATTEMPTS_LIMIT).contains(&given) {
                return Err(ProjectError::BadAttempts { what, given });
            }
        }
        if self.max_attempts_total < self.max_attempts_per_phase {
            return Err(ProjectError::TotalBelowPhase {
                total: self.max_attempts_total,
                per_phase: self.max_attempts_per_phase,
            });
        }
        for usd in [self.cost_budget_usd, self.daily_cost_budget_usd]
            .into_iter()
            .flatten()
        {
            if !usd.is_finite() || usd < 0.0 {
                return Err(ProjectError::BadCostBudget(usd));
            }
        }
        if self
            .test_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(ProjectError::EmptyTestCommand);
        }
        if self
            .agent_command
            .as_ref()
            .is_some_and(|argv| argv.first().is_none_or(|program| program.trim().is_empty()))
        {
            return Err(ProjectError::EmptyAgentCommand);
        }
        match (self.agent, &self.agent_command) {
            (AgentKind::Command, None) => return Err(ProjectError::CommandAgentWithoutArgv),
            (AgentKind::Command, Some(_)) | (_, None) => {}
            (kind, Some(_)) => return Err(ProjectError::AgentCommandForKind(kind)),
        }
        if let Some(model) = &self.agent_model {
            if model.trim().is_empty()
                || model.len() > 200
                || model.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ProjectError::BadAgentModel(model.clone()));
            }
        }
        for arg in &self.agent_args {
            if self.agent == AgentKind::Command {
                return Err(ProjectError::ArgsForCommandAgent(arg.clone()));
            }
            if arg.trim().is_empty() {
                return Err(ProjectError::EmptyAgentArg(arg.clone()));
            }
        }
        for (what, given) in [
            ("the agent time limit", self.agent_timeout_secs),
            ("the test time limit", self.test_timeout_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&given) {
                return Err(ProjectError::BadTimeout { what, given });
            }
        }
        if !(1..=MAX_MERGE_BATCH_SIZE).contains(&self.merge_batch_size) {
            return Err(ProjectError::BadMergeBatchSize(self.merge_batch_size));
        }
        if !(1..=MAX_ROUNDS_PER_ANSWER).contains(&self.rounds_per_answer) {
            return Err(ProjectError::BadRoundsPerAnswer(self.rounds_per_answer));
        }
        Ok(())
    }
}

impl NewProject {
    /// Whether the project has a cost cap (per item or per day).
    pub fn has_cost_cap(&self) -> bool {
        self.cost_budget_usd.is_some() || self.daily_cost_budget_usd.is_some()
    }

    /// Refuses a capped project whose agent reports only tokens when its model has no
    /// price in `prices`: a cap it could not keep.
    pub fn check_price(&self, prices: &PriceTable) -> Result<(), ProjectError> {
        if !self.has_cost_cap() {
            return Ok(());
        }
        unpriced_model(self.agent, self.agent_model.as_deref(), prices).map_or(Ok(()), |problem| {
            Err(ProjectError::UnpricedModel {
                agent: self.agent,
                problem,
            })
        })
    }
}

/// Agents that report tokens but not dollars, priced from the price table: Codex and
/// Gemini CLI report none; OpenCode's dollars are computed from the price Damascus
/// writes into its configuration, from the same table.
pub fn priced_by_damascus(agent: AgentKind) -> bool {
    matches!(
        agent,
        AgentKind::Codex | AgentKind::Gemini | AgentKind::Opencode
    )
}

/// Why `agent` running `model` cannot be priced from `prices`, or `None` when it can
/// (or needs no price).
pub fn unpriced_model(
    agent: AgentKind,
    model: Option<&str>,
    prices: &PriceTable,
) -> Option<String> {
    if !priced_by_damascus(agent) {
        return None;
    }
    match model {
        None => Some(format!(
            "name the model with --agent-model (one of the priced models: {}), since {agent}'s own default may change price",
            prices.models().join(", ")
        )),
        Some(model) if prices.find(model).is_none() => Some(format!(
            "model {model:?} has no price; give the worker one with --agent-price {model}=INPUT/CACHED/OUTPUT (USD per million tokens) or [agent_prices] in its configuration file, or choose a priced model ({})",
            prices.models().join(", ")
        )),
        Some(_) => None,
    }
}

fn agent_kinds() -> String {
    AgentKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The URL with its user part masked, when that part holds a secret: a password
/// (`https://user:pass@host/…`) or a user name that looks like a token
/// (`https://ghp_…@host/…`). A plain user name (`ssh://git@host/…`,
/// `https://ana@host/…`) and scp-style addresses (`git@host:acme/web.git`) hold none.
pub fn credentials_in_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let secret = match userinfo.split_once(':') {
        Some(_) => true,
        None => looks_like_token(userinfo),
    };
    secret.then(|| format!("{scheme}://***@{host}{}", &rest[authority_end..]))
}

/// How GitHub's and GitLab's tokens begin.
pub const FORGE_TOKEN_PREFIXES: [&str; 7] = [
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
];

/// Forge tokens: GitHub's and GitLab's prefixed ones, and long runs of letters and
/// digits such as Gitea's 40 hex digits; user names are short and rarely mix both.
fn looks_like_token(user: &str) -> bool {
    FORGE_TOKEN_PREFIXES.iter().any(|p| user.starts_with(p))
        || (user.len() >= 20
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && user.chars().any(|c| c.is_ascii_digit())
            && user.chars().any(|c| c.is_ascii_alphabetic()))
}

/// A conservative subset of `git check-ref-format --branch`.
fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NewProject {
        NewProject::local(ProjectName::parse("web").unwrap(), "/srv/git/web.git")
    }

    fn check(edit: impl FnOnce(&mut NewProject), expected: Result<(), ProjectError>) {
        let mut project = base();
        edit(&mut project);
        assert_eq!(project.validate(), expected);
    }

    #[test]
    fn validation() {
        check(|_| {}, Ok(()));
        check(
            |p| p.repository = " ".into(),
            Err(ProjectError::EmptyRepository),
        );
        check(|p| p.default_branch = "feature/x".into(), Ok(()));
        let credentials = |redacted: &str| {
            Err(ProjectError::CredentialsInRepository {
                redacted: redacted.into(),
            })
        };
        for (url, expected) in [
            (
                "https://bot:s3cret@gitea.example.com/acme/web.git",
                credentials("https://***@gitea.example.com/acme/web.git"),
            ),
            (
                "https://x-access-token:ghs_abc@github.com/acme/web",
                credentials("https://***@github.com/acme/web"),
            ),
            (
                "https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/a/b.git",
                credentials("https://***@github.com/a/b.git"),
            ),
            (
                "http://0123456789abcdef0123456789abcdef01234567@gitea:3000/a/b",
                credentials("http://***@gitea:3000/a/b"),
            ),
            (
                "ssh://git:pw@host/x.git",
                credentials("ssh://***@host/x.git"),
            ),
            ("ssh://git@host/x.git", Ok(())),
            ("ssh://git@host:2222/acme/web.git", Ok(())),
            ("git@github.com:acme/web.git", Ok(())),
            ("https://ana@gitea.example.com/acme/web.git", Ok(())),
            ("https://github.com/acme/web.git", Ok(())),
            ("https://github.com/acme/web@v2.git", Ok(())),
            ("/srv/git/web@2.git", Ok(())),
        ] {
            check(|p| p.repository = url.into(), expected);
        }
        check(
            |p| p.default_branch = "a b".into(),
            Err(ProjectError::BadBranch("a b".into())),
        );
        check(
            |p| p.default_branch = "x..y".into(),
            Err(ProjectError::BadBranch("x..y".into())),
        );
        check(
            |p| p.default_branch = "".into(),
            Err(ProjectError::BadBranch("".into())),
        );
        check(
            |p| p.forge_kind = ForgeKind::Github,
            Err(ProjectError::MissingForgeRepo(ForgeKind::Github)),
        );
        check(
            |p| {
                p.forge_kind = ForgeKind::Github;
                p.forge_repo = Some("acme".into());
            },
            Err(ProjectError::BadForgeRepo("acme".into())),
        );
        check(
            |p| {
                p.forge_kind = ForgeKind::Github;
                p.forge_repo = Some("acme/web".into());
            },
            Ok(()),
        );
        check(
            |p| {
                p.forge_kind = ForgeKind::Gitea;
                p.forge_repo = Some("acme/web".into());
            },
            Err(ProjectError::MissingForgeUrl),
        );
        check(
            |p| p.forge_url = Some("gitea.local".into()),
            Err(ProjectError::BadForgeUrl("gitea.local".into())),
        );
        check(
            |p| p.max_attempts_per_phase = 0,
            Err(ProjectError::BadAttempts {
                what: "per-phase attempt budget",
                given: 0,
            }),
        );
        check(
            |p| p.max_attempts_total = 2,
            Err(ProjectError::TotalBelowPhase {
                total: 2,
                per_phase: 3,
            }),
        );
        check(
            |p| p.cost_budget_usd = Some(-1.0),
            Err(ProjectError::BadCostBudget(-1.0)),
        );
        check(
            |p| p.test_command = Some("".into()),
            Err(ProjectError::EmptyTestCommand),
        );
        check(
            |p| p.agent_command = Some(vec![]),
            Err(ProjectError::EmptyAgentCommand),
        );
        check(
            |p| p.agent_command = Some(vec![" ".into()]),
            Err(ProjectError::EmptyAgentCommand),
        );
        check(
            |p| p.agent_command = Some(vec!["./agent.sh".into()]),
            Err(ProjectError::AgentCommandForKind(AgentKind::Claude)),
        );
        check(
            |p| {
                p.agent = AgentKind::Command;
                p.agent_command = Some(vec!["./agent.sh".into()]);
            },
            Ok(()),
        );
        check(
            |p| p.agent = AgentKind::Command,
            Err(ProjectError::CommandAgentWithoutArgv),
        );
        check(
            |p| p.agent_model = Some("gpt 5".into()),
            Err(ProjectError::BadAgentModel("gpt 5".into())),
        );
        check(
            |p| p.agent_args = vec!["".into()],
            Err(ProjectError::EmptyAgentArg("".into())),
        );
        check(
            |p| {
                p.agent = AgentKind::Command;
                p.agent_command = Some(vec!["./agent.sh".into()]);
                p.agent_args = vec!["--fast".into()];
            },
            Err(ProjectError::ArgsForCommandAgent("--fast".into())),
        );
        check(
            |p| p.merge_batch_size = 0,
            Err(ProjectError::BadMergeBatchSize(0)),
        );
        check(
            |p| p.merge_batch_size = 33,
            Err(ProjectError::BadMergeBatchSize(33)),
        );
        check(|p| p.merge_batch_size = 1, Ok(()));
        check(
            |p| p.rounds_per_answer = 0,
            Err(ProjectError::BadRoundsPerAnswer(0)),
        );
        check(
            |p| p.test_timeout_secs = 0,
            Err(ProjectError::BadTimeout {
                what: "the test time limit",
                given: 0,
            }),
        );
    }
}
