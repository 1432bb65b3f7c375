//! One run of the project's coding agent (`agents`: Claude Code, Codex, Gemini CLI,
//! OpenCode, a command): the builder's run, and the merge queue's conflict resolution
//! at the head. Budget is reserved first and handed to the agent (Claude Code's
//! `--max-budget-usd`, any agent's `DAMASCUS_BUDGET_USD`); an agent that does not cap
//! itself is stopped when its streamed usage, priced, reaches the reservation. The
//! process runs confined (`sandbox`) under the agent's time limit; its raw log and its
//! transcript go to the item's log directory; its spend is recorded whatever its end
//! (`agent_spend`), and its session is recorded for a later run to continue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use damascus_core::{CostEntry, Verdict};

use crate::agent_spend::Pricing;
use crate::agents::claude::budget_text;
use crate::agents::{self, Agent, End, Launch, Task};
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

/// The session of the item's agent that a run in `dir` can continue: one recorded by
/// the same agent on this host for this worktree, whose files are still in the item's
/// HOME.
pub(crate) async fn resumable_session(
    inner: &Inner,
    input: &PhaseInput,
    dir: &Path,
) -> Option<String> {
    let agent = agents::for_kind(input.project.agent)?;
    let session = damascus_db::agent_sessions::get(&input.job.pool, input.item.id)
        .await
        .ok()??;
    let here = damascus_queue::orphans::host_name();
    if session.agent != agent.kind().as_str()
        || session.host != here
        || Path::new(&session.worktree) != dir
    {
        return None;
    }
    let home = crate::sandbox::home_dir(inner, input);
    agent
        .session_kept(&home, &session.session_id)
        .then_some(session.session_id)
}

/// How a prompt that continues the agent's session begins.
pub(crate) const RESUMED: &str = "You worked on this change before, in this worktree, and the branch holds what you committed. What is new since then:\n";

/// The log file of a phase's run: `logs/<item>/<name>.log` under the data dir.
pub(crate) fn log_file(inner: &Inner, input: &PhaseInput, name: &str) -> PathBuf {
    inner
        .config
        .data_dir
        .join("logs")
        .join(input.item.id.to_string())
        .join(format!("{name}.log"))
}

/// A question for a person that the run cannot start without.
fn ask(question: String) -> AgentFailure {
    Verdict::NeedsHuman {
        question,
        context: String::new(),
    }
    .into()
}

/// Runs the project's agent in `dir` with `prompt`, for `task`, continuing session
/// `resume` when given.
pub(crate) async fn run(
    inner: &Inner,
    input: &PhaseInput,
    prompt: String,
    dir: &Path,
    task: Task,
    log_name: &str,
    resume: Option<&str>,
) -> Result<AgentRun, AgentFailure> {
    let project = &input.project;
    let Some(agent) = agents::for_kind(project.agent) else {
        return Err(ask(format!(
            "project {} runs agent {}, which this worker's build of Damascus cannot run; upgrade the worker or choose another agent",
            project.name, project.agent
        )));
    };
    let prices = &inner.config.prices;
    let budget = input.reserve_budget().await?;
    // A cap cannot hold for tokens it cannot price.
    if budget.is_some() {
        if let Some(problem) = damascus_core::project::unpriced_model(
            agent.kind(),
            project.agent_model.as_deref(),
            prices,
        ) {
            return Err(ask(format!(
                "project {} has a cost cap, and agent {} reports tokens, not dollars, so Damascus prices them: {problem}; then answer to try again",
                project.name,
                agent.kind()
            )));
        }
    }
    let home = crate::sandbox::home_dir(inner, input);
    let log_file = log_file(inner, input, log_name);
    let result_file = log_file.with_extension("result.json");
    let env = agents::env_for(agent, &inner.config.agent_env);
    let price = project.agent_model.as_deref().and_then(|m| prices.find(m));
    let launch = Launch {
        model: project.agent_model.as_deref(),
        extra_args: &project.agent_args,
        command: project.agent_command.as_deref(),
        budget_usd: budget,
        max_turns: inner.config.claude_max_turns,
        resume,
        home: &home,
        env: &env,
        price: price.as_ref(),
        result_file: &result_file,
    };
    let invocation = agent
        .invocation(&launch, prompt)
        .map_err(|why| ask(format!("cannot start agent {}: {why}", agent.kind())))?;
    for (path, text) in &invocation.home_files {
        let path = home.join(path);
        let written = async {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&path, text).await
        };
        written.await.map_err(|e| Verdict::TransientError {
            reason: format!("cannot write the agent's settings {}: {e}", path.display()),
        })?;
    }
    let program = invocation.argv.first().cloned().unwrap_or_default();
    let mut extra = env.clone();
    extra.extend(invocation.env.iter().cloned());
    extra.push(("DAMASCUS_ITEM_ID".into(), input.item.id.to_string()));
    extra.push(("DAMASCUS_ATTEMPT".into(), input.job.attempt.to_string()));
    extra.push(("DAMASCUS_TASK".into(), task.as_str().to_owned()));
    if let Some(usd) = budget {
        extra.push(("DAMASCUS_BUDGET_USD".into(), budget_text(usd)));
    }
    let confined = crate::sandbox::confine(inner, input, dir, invocation.argv, &extra).await?;
    let pricing_model = project.agent_model.clone();
    let program_name = program.clone();
    let table = prices.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let watch = budget
        .filter(|_| !agent.caps_its_own_budget())
        .map(|reserved| crate::transcript_log::BudgetWatch {
            reserved,
            usd: Box::new(move |reader: &dyn agents::StreamReader| {
                Pricing {
                    table: &table,
                    model: pricing_model.as_deref(),
                    program: &program_name,
                }
                .usd(&reader.spent())
            }),
            stop: stop.clone(),
        });
    let (lines, transcript) = crate::transcript_log::TranscriptLog::start(
        crate::transcript_log::path_for(&log_file),
        agent.reader(&launch),
        watch,
    );
    let end = process::run(
        ProcessSpec {
            argv: confined.argv,
            dir: dir.to_path_buf(),
            env: confined.env,
            stdin: invocation.stdin,
            timeout: Duration::from_secs(project.agent_timeout_secs as u64),
            log_file: log_file.clone(),
            job: Some(input.job.clone()),
            user: confined.user,
            stdout_lines: Some(lines),
            stop: Some(stop),
        },
        &input.job.cancel,
    )
    .await;
    confined.handed.release().await;
    let reader = transcript.finish().await;
    let end = end.map_err(|e| {
        let why = format!(
            "{e}; install the agent ({}) on this worker or check the project's agent settings",
            agent.install_hint()
        );
        // A program that is not there will not be there on the next attempt either.
        if e.source.kind() == std::io::ErrorKind::NotFound {
            ask(format!("{why}, then answer to try again"))
        } else {
            fail(why, "").into()
        }
    })?;
    let pricing = Pricing {
        table: prices,
        model: project.agent_model.as_deref(),
        program: &program,
    };
    // A run killed before it reported leaves a ledger row that says its spend is
    // unknown, for the amount reserved for it: recording the row settles the
    // reservation, so anything less would let the caps forget what it may have spent.
    let unreported = |why: &str| CostEntry {
        source: damascus_core::CostSource::Agent,
        model: format!("{program} (spend unknown: {why} before it reported)"),
        tokens_in: 0,
        tokens_out: 0,
        tokens_cached: 0,
        price: None,
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
    let (code, tail, stopped) = match end {
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
        ProcessEnd::Exited { code, tail, .. } => (code, tail, false),
        ProcessEnd::Stopped { tail, .. } => (None, tail, true),
    };
    let outcome = reader
        .lock()
        .expect("the reader does not panic")
        .outcome(code);
    // What the agent reports spending counts whatever its exit code: per model, with
    // its tokens, priced when it gives no dollars.
    let costs = pricing.rows(&outcome.spend, budget);
    if let Some(session) = &outcome.session {
        record_session(input, agent, dir, session, resume == Some(session.as_str())).await;
    }
    if stopped {
        let spent = pricing.usd(&outcome.spend);
        return Err(AgentFailure {
            verdict: fail(
                format!(
                    "the agent was stopped when its usage reached the {} USD reserved for it (it spent {spent:.4} USD); raise the item's budget to let it finish",
                    budget_text(budget.unwrap_or(0.0))
                ),
                tail,
            ),
            costs,
        });
    }
    let why = match outcome.end {
        End::Success => return Ok(AgentRun { costs, tail }),
        End::Failure(why) | End::TurnLimit(why) | End::BudgetLimit(why) => why,
    };
    // A non-zero exit is named, with where its whole output is.
    let why = match code {
        Some(0) => why,
        _ if why.starts_with("the agent exited") => {
            format!("{why}; its log is {}", log_file.display())
        }
        other => format!(
            "the agent exited with {} ({why}); its log is {}",
            other
                .map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into()),
            log_file.display()
        ),
    };
    Err(AgentFailure {
        verdict: fail(why, tail),
        costs,
    })
}

/// Records the session a run names, for a later run to continue.
async fn record_session(
    input: &PhaseInput,
    agent: &dyn Agent,
    dir: &Path,
    session: &str,
    resumed: bool,
) {
    let run = damascus_db::agent_sessions::SessionRun {
        agent: agent.kind().as_str(),
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
