//! One run of the project's coding agent: the builder's run, and the merge queue's
//! conflict resolution at the head. Budget is reserved first and handed to the agent
//! (Claude Code's `--max-budget-usd`, any agent's `DAMASCUS_BUDGET_USD`); the prompt
//! goes on stdin; the process runs confined (`sandbox`) under the agent's time limit,
//! and its log goes to the item's log directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use damascus_core::{CostEntry, Verdict};

use crate::process::{self, ProcessEnd, ProcessSpec};
use crate::{fail, Inner, PhaseInput};

/// What a run that ended well left behind.
pub(crate) struct AgentRun {
    pub costs: Vec<CostEntry>,
    /// The end of its output, for a verdict that follows.
    pub tail: String,
}

/// A run that did not end well: the verdict, and what it spent anyway.
pub(crate) struct AgentFailure {
    pub verdict: Verdict,
    pub costs: Vec<CostEntry>,
}

impl From<Verdict> for AgentFailure {
    fn from(verdict: Verdict) -> AgentFailure {
        AgentFailure {
            verdict,
            costs: Vec::new(),
        }
    }
}

/// The agent's argv: the project's, or Claude Code's, which is told the budget
/// reserved for it.
fn argv(
    inner: &Inner,
    input: &PhaseInput,
    budget: Option<f64>,
    resume: Option<&str>,
) -> Vec<String> {
    input.project.agent_command.clone().unwrap_or_else(|| {
        let mut argv = vec![
            "claude".into(),
            "-p".into(),
            "--output-format".into(),
            "stream-json".into(),
            // stream-json needs --verbose: every message, tool call and result as it
            // happens, for the transcript; the last line is the same result object.
            "--verbose".into(),
            "--max-turns".into(),
            inner.config.claude_max_turns.to_string(),
            "--permission-mode".into(),
            "dontAsk".into(),
            "--allowedTools".into(),
            "Read,Write,Edit,Bash".into(),
        ];
        if let Some(usd) = budget {
            argv.extend(["--max-budget-usd".into(), budget_text(usd)]);
        }
        if let Some(session) = resume {
            argv.extend(["--resume".into(), session.to_owned()]);
        }
        argv
    })
}

/// The agent whose sessions Damascus records and continues: Claude Code, the default.
const CLAUDE: &str = "claude";

/// The session of the item's agent that a run in `dir` can continue: Claude Code's,
/// recorded on this host for this worktree, whose file is still in the item's HOME.
pub(crate) async fn resumable_session(
    inner: &Inner,
    input: &PhaseInput,
    dir: &Path,
) -> Option<String> {
    if input.project.agent_command.is_some() {
        return None;
    }
    let session = damascus_db::agent_sessions::get(&input.job.pool, input.item.id)
        .await
        .ok()??;
    let here = damascus_queue::orphans::host_name();
    if session.agent != CLAUDE || session.host != here || Path::new(&session.worktree) != dir {
        return None;
    }
    // Claude Code keeps a session as `~/.claude/projects/<dir>/<session>.jsonl`.
    let projects = crate::sandbox::home_dir(inner, input).join(".claude/projects");
    let file = format!("{}.jsonl", session.session_id);
    let found = std::fs::read_dir(projects)
        .ok()?
        .flatten()
        .any(|entry| entry.path().join(&file).is_file());
    found.then_some(session.session_id)
}

/// A budget as the agent is told it: rounded down to 1/10000 USD, so that rounding
/// never grants more than was reserved.
fn budget_text(usd: f64) -> String {
    format!("{:.4}", (usd * 10_000.0).floor() / 10_000.0)
}

/// The log file of a phase's run: `logs/<item>/<name>.log` under the data dir.
pub(crate) fn log_file(inner: &Inner, input: &PhaseInput, name: &str) -> PathBuf {
    inner
        .config
        .data_dir
        .join("logs")
        .join(input.item.id.to_string())
        .join(format!("{name}.log"))
}

/// Runs the agent in `dir` with `prompt` on stdin. `task` tells the agent what it is
/// for (`DAMASCUS_TASK`: build, or resolve-conflicts).
pub(crate) async fn run(
    inner: &Inner,
    input: &PhaseInput,
    prompt: String,
    dir: &Path,
    task: &str,
    log_name: &str,
    resume: Option<&str>,
) -> Result<AgentRun, AgentFailure> {
    let project = &input.project;
    let budget = input.reserve_budget().await?;
    let argv = argv(inner, input, budget, resume);
    let model = argv.first().cloned().unwrap_or_default();
    let mut extra = inner.config.agent_env.clone();
    extra.push(("DAMASCUS_ITEM_ID".into(), input.item.id.to_string()));
    extra.push(("DAMASCUS_ATTEMPT".into(), input.job.attempt.to_string()));
    extra.push(("DAMASCUS_TASK".into(), task.to_owned()));
    if let Some(usd) = budget {
        extra.push(("DAMASCUS_BUDGET_USD".into(), budget_text(usd)));
    }
    let confined = crate::sandbox::confine(inner, input, dir, argv, &extra).await?;
    let log_file = log_file(inner, input, log_name);
    let (lines, transcript) =
        crate::transcript_log::TranscriptLog::start(crate::transcript_log::path_for(&log_file));
    let end = process::run(
        ProcessSpec {
            argv: confined.argv,
            dir: dir.to_path_buf(),
            env: confined.env,
            stdin: Some(prompt),
            timeout: Duration::from_secs(project.agent_timeout_secs as u64),
            log_file: log_file.clone(),
            job: Some(input.job.clone()),
            user: confined.user,
            stdout_lines: Some(lines),
        },
        &input.job.cancel,
    )
    .await;
    confined.handed.release().await;
    let result_line = transcript.finish().await;
    let end = end.map_err(|e| fail(format!("{e}; check the project's --agent-command"), ""))?;
    // A run killed before it reported leaves a ledger row that says its spend is
    // unknown, for the amount reserved for it: recording the row settles the
    // reservation, so anything less would let the caps forget what it may have spent.
    let unreported = |why: &str| CostEntry {
        source: damascus_core::CostSource::Agent,
        model: format!("{model} (spend unknown: {why} before it reported)"),
        tokens_in: 0,
        tokens_out: 0,
        usd: budget.unwrap_or(0.0),
    };
    let reserved = budget
        .map(|usd| {
            format!(
                "; it may have spent up to the {} USD reserved for it",
                budget_text(usd)
            )
        })
        .unwrap_or_default();
    let (code, stdout, tail) = match end {
        ProcessEnd::Cancelled => {
            return Err(AgentFailure {
                verdict: Verdict::TransientError {
                    reason: format!("the agent was stopped{reserved}"),
                },
                costs: vec![unreported("stopped")],
            })
        }
        ProcessEnd::TimedOut { tail } => {
            return Err(AgentFailure {
                verdict: fail(
                    format!(
                        "the agent ran past its {} s limit and was killed{reserved}",
                        project.agent_timeout_secs
                    ),
                    tail,
                ),
                costs: vec![unreported("killed at its time limit")],
            })
        }
        ProcessEnd::Exited { code, stdout, tail } => (code, stdout, tail),
    };
    // What the agent reports spending counts whatever its exit code: per model, with
    // its tokens, when the result says.
    // The result line the transcript saw (all of stdout may not be kept in memory),
    // else the last JSON line of stdout.
    let result = result_line
        .as_deref()
        .and_then(crate::agent_result::parse)
        .or_else(|| crate::agent_result::parse(&stdout));
    let costs: Vec<CostEntry> = result.as_ref().map(|r| r.costs(&model)).unwrap_or_default();
    if let Some(session) = result.as_ref().and_then(|r| r.session_id.as_deref()) {
        if project.agent_command.is_none() {
            record_session(input, dir, session, resume == Some(session)).await;
        }
    }
    if code != Some(0) {
        return Err(AgentFailure {
            verdict: fail(
                format!(
                    "the agent exited with {}; its log is {}",
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| "a signal".into()),
                    log_file.display()
                ),
                tail,
            ),
            costs,
        });
    }
    if let Some(why) = result.as_ref().and_then(|r| r.failure()) {
        return Err(AgentFailure {
            verdict: fail(why, tail),
            costs,
        });
    }
    Ok(AgentRun { costs, tail })
}

/// Records the session a run of Claude Code names, for a later run to continue.
async fn record_session(input: &PhaseInput, dir: &Path, session: &str, resumed: bool) {
    let run = damascus_db::agent_sessions::SessionRun {
        agent: CLAUDE,
        session_id: session,
        host: damascus_queue::orphans::host_name(),
        worktree: &dir.to_string_lossy(),
        resumed,
    };
    if let Err(e) =
        damascus_db::agent_sessions::record(&input.job.pool, input.job.claim, input.item.id, run)
            .await
    {
        tracing::warn!("cannot record the agent's session: {e}");
    }
}

/// The conflicted files among `files` that still hold conflict markers in `dir`.
pub(crate) fn unresolved(dir: &Path, files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|file| {
            std::fs::read_to_string(dir.join(file)).is_ok_and(|text| {
                text.lines()
                    .any(|l| l.starts_with("<<<<<<< ") || l.starts_with(">>>>>>> "))
            })
        })
        .cloned()
        .collect()
}

/// The prompt's section that hands conflicts to the agent.
pub(crate) fn conflicts_section(default_branch: &str, files: &[String]) -> String {
    format!(
        "\n## Conflicts with {default_branch}\n{default_branch} moved since this branch was built. It is merged into the branch now, and these files have conflicts (the <<<<<<< ======= >>>>>>> markers are in them): {files}. Resolve them, keeping what both sides meant, as part of this change.\n",
        files = files.join(", ")
    )
}
