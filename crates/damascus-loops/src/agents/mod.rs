//! The coding agents Damascus can run, one file each, behind one interface: how an
//! agent is started for a run (a build, a conflict resolution, a follow-up in its own
//! session), which of the worker's variables it needs (its key and base URL; no other
//! agent's reach it), how the prompt goes in, and a reader of its output stream into
//! normalised transcript events, the usage so far, and the run's outcome.
//!
//! `agent` runs whichever agent a project names through this interface; it owns the
//! budget, the pricing of tokens, the stop at the reservation and the verdict. An
//! agent's file owns nothing but its CLI's contract.
//!
//! Adding an agent: a file here implementing `Agent` and `StreamReader`, a variant of
//! `damascus_core::AgentKind` (and the `projects_agent_known` check, by migration), an
//! arm in `for_kind`, a test against the real CLI and a scripted model server
//! (`tests/loops/`), and a row in docs/AGENTS.md.

pub(crate) mod claude;
pub(crate) mod codex;
pub(crate) mod command;
pub(crate) mod gemini;
pub(crate) mod opencode;

use std::path::{Path, PathBuf};

use damascus_core::prices::{FoundPrice, Tokens};
use damascus_core::transcript::TranscriptEvent;
use damascus_core::AgentKind;

/// What a run is for (`DAMASCUS_TASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// Build the item from its spec (or continue its session with what is new).
    Build,
    /// Resolve the conflicts the merge queue found at the head.
    ResolveConflicts,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Build => "build",
            Task::ResolveConflicts => "resolve-conflicts",
        }
    }
}

/// Everything an agent's file needs to start one run.
pub(crate) struct Launch<'a> {
    /// `--agent-model`, when the project names one.
    pub model: Option<&'a str>,
    /// `--agent-arg`s, appended after Damascus's own arguments.
    pub extra_args: &'a [String],
    /// The argv of a `command` agent.
    pub command: Option<&'a [String]>,
    /// What the run may spend, when a cap applies (the reservation).
    pub budget_usd: Option<f64>,
    /// `--claude-max-turns` (agents with a turn limit use it).
    pub max_turns: u32,
    /// The agent's own session to continue, when it can be.
    pub resume: Option<&'a str>,
    /// The run's HOME: the agent's configuration and sessions live under it, per item.
    pub home: &'a Path,
    /// The worker's variables this agent gets (its own names and `--agent-env`'s).
    pub env: &'a [(String, String)],
    /// The price of `model`, for an agent whose configuration carries it (OpenCode).
    pub price: Option<&'a FoundPrice>,
    /// Where a `command` agent may write its result JSON (`DAMASCUS_RESULT_FILE`).
    pub result_file: &'a Path,
}

impl Launch<'_> {
    /// The value of one of the variables this agent gets.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A build's launch for a unit test: under `home`, with `env` and `result_file`, no
/// model, arguments, command, session or price, a 1 USD budget and 5 turns. A test
/// names what it needs besides with struct update syntax
/// (`Launch { model: Some(..), ..test_launch(home, &env, &result) }`).
#[cfg(test)]
pub(crate) fn test_launch<'a>(
    home: &'a Path,
    env: &'a [(String, String)],
    result_file: &'a Path,
) -> Launch<'a> {
    Launch {
        model: None,
        extra_args: &[],
        command: None,
        budget_usd: Some(1.0),
        max_turns: 5,
        resume: None,
        home,
        env,
        price: None,
        result_file,
    }
}

/// How one run is started.
#[derive(Debug, Default)]
pub(crate) struct Invocation {
    pub argv: Vec<String>,
    /// Variables besides PATH, HOME, LANG, `Launch::env` and the `DAMASCUS_*` ones.
    pub env: Vec<(String, String)>,
    /// What goes on stdin (the prompt, for every agent that reads it there).
    pub stdin: Option<String>,
    /// Files written under HOME before the run (settings the CLI needs), by path
    /// relative to HOME.
    pub home_files: Vec<(PathBuf, String)>,
}

/// One model's use in a run so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelSpend {
    /// The model, when the agent names it.
    pub model: Option<String>,
    pub tokens: Tokens,
    /// Dollars, when the agent reports them.
    pub usd: Option<f64>,
}

/// How a run ended, as its output and exit code say.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum End {
    Success,
    /// It did not do its work (a non-zero exit, an error, tools refused): why.
    Failure(String),
    /// It used the turns it was allowed.
    TurnLimit(String),
    /// It stopped at the budget it was told.
    BudgetLimit(String),
}

/// What a run came to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub end: End,
    /// The agent's session or thread, for a later run to continue.
    pub session: Option<String>,
    /// What it used, per model.
    pub spend: Vec<ModelSpend>,
    pub turns: Option<i64>,
}

/// A coding agent's CLI.
pub(crate) trait Agent: Send + Sync {
    fn kind(&self) -> AgentKind;
    /// The program `damascus agents` looks for on PATH (`None` for `command`).
    fn program(&self) -> Option<&'static str>;
    /// How to install it.
    fn install_hint(&self) -> &'static str;
    /// The worker's variables it needs (its key and base URL); only these and the
    /// deployment's `--agent-env` names reach it.
    fn env_names(&self) -> &'static [&'static str];
    /// Whether it stops itself at the budget it is told (else Damascus stops it when
    /// the usage it streams reaches its reservation).
    fn caps_its_own_budget(&self) -> bool {
        false
    }
    /// The argv, environment, stdin and files of one run with `prompt`; an error says
    /// what is missing (a setting, a variable) and how to give it.
    fn invocation(&self, launch: &Launch<'_>, prompt: String) -> Result<Invocation, String>;
    /// A reader for one run's stdout.
    fn reader(&self, launch: &Launch<'_>) -> Box<dyn StreamReader>;
    /// Whether session `id` can be continued from `home` (its files are there).
    fn session_kept(&self, home: &Path, id: &str) -> bool;
}

/// Reads one run's stdout, line by line, as it arrives.
pub(crate) trait StreamReader: Send {
    /// The normalised events one line holds (none for a line it does not know).
    fn line(&mut self, line: &str) -> Vec<TranscriptEvent>;
    /// What the run has used so far, per model (Damascus stops an agent that does
    /// not cap itself when this reaches its reservation).
    fn spent(&self) -> Vec<ModelSpend>;
    /// How the run ended, given its exit code (`None`: killed by a signal), once its
    /// stdout has closed.
    fn outcome(&mut self, exit: Option<i32>) -> Outcome;
}

/// The agent of `kind` (every kind has one; `Option` leaves room for a kind a newer
/// database knows and this build does not).
pub(crate) fn for_kind(kind: AgentKind) -> Option<&'static dyn Agent> {
    match kind {
        AgentKind::Claude => Some(&claude::Claude),
        AgentKind::Command => Some(&command::Command),
        AgentKind::Codex => Some(&codex::Codex),
        AgentKind::Gemini => Some(&gemini::Gemini),
        AgentKind::Opencode => Some(&opencode::Opencode),
    }
}

/// Every agent this build can run.
pub(crate) fn all() -> Vec<&'static dyn Agent> {
    AgentKind::ALL.iter().filter_map(|k| for_kind(*k)).collect()
}

/// Every variable name some agent needs: the worker passes these through when set.
/// (A unit test checks that another agent's key does not reach an agent.)
pub fn known_env_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = all()
        .iter()
        .flat_map(|a| a.env_names().iter().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The deployment's variables `agent` gets: its own, and those no agent names (given
/// with `--agent-env`); another agent's key never reaches it. A `command` agent, the
/// operator's own program (often a wrapper around one of the agents), gets them all.
pub(crate) fn env_for(agent: &dyn Agent, all_env: &[(String, String)]) -> Vec<(String, String)> {
    if agent.kind() == AgentKind::Command {
        return all_env.to_vec();
    }
    let others = known_env_names();
    all_env
        .iter()
        .filter(|(name, _)| {
            agent.env_names().contains(&name.as_str()) || !others.contains(&name.as_str())
        })
        .cloned()
        .collect()
}

/// The failure a non-zero exit is, with what the output said.
pub(crate) fn exit_failure(exit: Option<i32>, said: Option<&str>) -> End {
    let code = exit
        .map(|c| c.to_string())
        .unwrap_or_else(|| "a signal".into());
    End::Failure(match said {
        Some(said) if !said.trim().is_empty() => format!("the agent exited with {code}: {said}"),
        _ => format!("the agent exited with {code}"),
    })
}

/// Whether a file whose name contains `id` is anywhere under `dir` (agents keep a
/// session as a file named after it, in directories of their own choosing).
pub(crate) fn file_named_under(dir: &Path, id: &str, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            depth > 0 && file_named_under(&path, id, depth - 1)
        } else {
            entry.file_name().to_string_lossy().contains(id)
        }
    })
}

/// What `damascus agents` shows of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub kind: AgentKind,
    /// The program looked for on PATH (`None` for `command`).
    pub program: Option<&'static str>,
    pub install_hint: &'static str,
    /// The worker's variables it gets.
    pub env_names: &'static [&'static str],
    /// Whether it stops itself at its budget (else Damascus stops it).
    pub caps_its_own_budget: bool,
    /// Whether its tokens are priced from the price table.
    pub priced_by_damascus: bool,
}

/// Every agent this build can run, in `AgentKind` order.
pub fn catalogue() -> Vec<AgentInfo> {
    all()
        .into_iter()
        .map(|a| AgentInfo {
            kind: a.kind(),
            program: a.program(),
            install_hint: a.install_hint(),
            env_names: a.env_names(),
            caps_its_own_budget: a.caps_its_own_budget(),
            priced_by_damascus: damascus_core::project::priced_by_damascus(a.kind()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_its_own_variables_and_the_deployments_not_another_agents() {
        let env: Vec<(String, String)> = [
            ("ANTHROPIC_API_KEY", "a"),
            ("MY_PROXY", "p"),
            ("PATH", "/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let names = |agent: &dyn Agent| -> Vec<String> {
            env_for(agent, &env).into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            names(&claude::Claude),
            ["ANTHROPIC_API_KEY", "MY_PROXY", "PATH"]
        );
        assert_eq!(
            names(&command::Command),
            ["ANTHROPIC_API_KEY", "MY_PROXY", "PATH"]
        );
        for agent in all() {
            if agent.kind() != AgentKind::Claude && agent.kind() != AgentKind::Command {
                assert!(!names(agent).contains(&"ANTHROPIC_API_KEY".to_owned()));
            }
        }
    }
}
