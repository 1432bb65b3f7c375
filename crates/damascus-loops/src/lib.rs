//! damascus-loops: the three loops that advance work items, behind the queue's
//! `PhaseRunner` seam.
//!
//! - spec-refiner (`spec_phase`): the story → a spec with acceptance criteria and one
//!   test command, from a model or (passthrough) from the story itself.
//! - code-builder (`build_phase`): a worktree on `damascus/<project>-<item>`, the coding
//!   agent run with the spec on stdin, commit, push, open or find the pull request.
//! - reviewer (`review_phase`): the head of the repository's merge queue; brings its
//!   branch up to date (the agent only for a real conflict), tests it with the next
//!   queued items, and merges exactly the tested commits (bisecting a failed batch).
//!
//! Each phase is idempotent, because a lease can run it twice: the builder reuses the
//! branch it pushed and the PR the forge already has, and resumes after the last step
//! an earlier run finished (`damascus_db::build_steps`), so the agent's paid work is
//! not thrown away by a forge error after it; the reviewer treats a PR that is already
//! merged as passed, and the forge refuses to merge a head it did not test. Every forge
//! call goes through `forge_guard`: a forge's rate limit is kept in the database for
//! every worker and waited out (`Verdict::Deferred`), not counted.
//! The coding agent's run (`agent`) is shared by the builder and the reviewer; each
//! agent's CLI contract is a file of its own under `agents`.
//!
//! Architecture invariants: no SQL (reads go through `damascus-db`); the verdict is
//! returned, never written here — the queue writes it in one transaction; story text
//! reaches processes only through stdin or files, never a shell command line.

mod agent;
mod agent_result;
mod agent_spend;
pub mod agents;
mod branch_update;
mod build_phase;
mod forge_guard;
pub mod llm;
mod process;
mod review_phase;
mod sandbox;
mod scrub;
mod spec_phase;
mod transcript_log;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use damascus_core::{CostEntry, ForgeKind, Phase, PhaseReport, Verdict};
use damascus_db::items::WorkItem;
use damascus_db::projects::Project;
use damascus_forge::{Forge, LocalForge};
use damascus_git::Identity;
use damascus_queue::{JobContext, PhaseFuture, PhaseRunner};

pub use damascus_forge::GITHUB_WRITE_GAP;
pub use llm::LlmConfig;
pub use sandbox::AgentUser;

/// What the loops need from the deployment.
#[derive(Clone)]
pub struct LoopsConfig {
    /// Worktrees (`worktrees/`), cache clones (`repos/`) and logs (`logs/`) live here.
    pub data_dir: PathBuf,
    /// The model for refine-mode specs; `None` leaves such items to a person.
    pub llm: Option<LlmConfig>,
    pub identity: Identity,
    /// Variables the agent gets besides PATH, HOME and LANG (e.g. ANTHROPIC_BASE_URL).
    pub agent_env: Vec<(String, String)>,
    /// `--max-turns` for the default agent, Claude Code.
    pub claude_max_turns: u32,
    /// The API token for Gitea projects (`DAMASCUS_GITEA_TOKEN`).
    pub gitea_token: Option<String>,
    /// The API token for GitHub projects (`DAMASCUS_GITHUB_TOKEN`).
    pub github_token: Option<String>,
    /// The unprivileged user the agent and the tests run as (`--agent-user`).
    pub agent_user: Option<AgentUser>,
    /// The longest one git command may run (a clone, a fetch, a push) before it is
    /// killed and the phase ends with a transient error.
    pub git_timeout: Duration,
    /// The least time between two writes of one GitHub token (GitHub asks for a
    /// second; `damascus_forge::GITHUB_WRITE_GAP`).
    pub github_write_gap: Duration,
    /// How long a merge waits for the forge's pull request to show the commit that was
    /// pushed (a forge may see a push seconds after it) before the phase is retried.
    pub head_wait: Duration,
    /// What agents' tokens cost, for agents that report no dollars (`data/prices.toml`
    /// with the deployment's `--agent-price` overrides).
    pub prices: damascus_core::prices::PriceTable,
}

/// How long a merge waits for the pull request's head by default.
pub const DEFAULT_HEAD_WAIT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for LoopsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The agent's variables hold API keys: their names only.
        let env: Vec<&str> = self.agent_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("LoopsConfig")
            .field("data_dir", &self.data_dir)
            .field("llm", &self.llm)
            .field("identity", &self.identity)
            .field("agent_env", &env)
            .field("claude_max_turns", &self.claude_max_turns)
            .field("gitea_token", &self.gitea_token.as_ref().map(|_| "***"))
            .field("github_token", &self.github_token.as_ref().map(|_| "***"))
            .field("agent_user", &self.agent_user)
            .field("git_timeout", &self.git_timeout)
            .field("github_write_gap", &self.github_write_gap)
            .field("head_wait", &self.head_wait)
            .field("prices", &self.prices.models().len())
            .finish()
    }
}

/// The loops as one `PhaseRunner`.
#[derive(Clone)]
pub struct Loops {
    inner: Arc<Inner>,
}

struct Inner {
    config: LoopsConfig,
    llm: Option<llm::LlmClient>,
}

/// Serialises phases of one item on this machine (a rerun after a lost lease may
/// overlap the old run for a moment): they share the item's worktree.
async fn lock_item_dir(config: &LoopsConfig, input: &PhaseInput) -> std::io::Result<std::fs::File> {
    let dir = config.data_dir.join("worktrees").join(&input.project.name);
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join(format!("{}.lock", input.key()));
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .expect("the lock task does not panic")
}

/// What every phase gets: the job, its item and project.
pub(crate) struct PhaseInput {
    pub job: JobContext,
    pub item: WorkItem,
    pub project: Project,
}

impl PhaseInput {
    /// `<project>-<item id>`: names the branch and the worktree.
    pub fn key(&self) -> String {
        format!("{}-{}", self.project.name, self.item.id)
    }

    pub fn branch(&self) -> String {
        format!("damascus/{}", self.key())
    }

    /// The item's worktree for a phase: `worktrees/<project>/<key><suffix>`.
    pub fn worktree_dir(&self, config: &LoopsConfig, suffix: &str) -> PathBuf {
        config
            .data_dir
            .join("worktrees")
            .join(&self.project.name)
            .join(format!("{}{suffix}", self.key()))
    }

    /// The project's cache clone, fetched from its repository; its lock is held while
    /// the workspace lives.
    pub async fn workspace(&self, config: &LoopsConfig) -> Result<workspace::Workspace, Verdict> {
        workspace::Workspace::open(config, &self.project)
            .await
            .map_err(|e| Verdict::TransientError {
                reason: format!("cannot fetch the project's repository: {e}"),
            })
    }

    /// Reserves budget for one model or agent call before it starts, in the database,
    /// against the item's budget and the project's daily budget minus what running
    /// calls hold: `Ok(None)` when no cap applies, `Ok(Some(usd))` for what the call
    /// may spend. A budget already spent asks a person; one that running calls hold
    /// waits for them to settle (up to `BUDGET_WAIT`), then is retried later.
    pub async fn reserve_budget(&self) -> Result<Option<f64>, Verdict> {
        let ask = |question: String| Verdict::NeedsHuman {
            question,
            context: String::new(),
        };
        let waited_since = tokio::time::Instant::now();
        loop {
            let reservation =
                damascus_db::budget::reserve(&self.job.pool, self.job.claim, self.item.id)
                    .await
                    .map_err(|e| Verdict::TransientError {
                        reason: format!("cannot reserve budget for the call: {e}"),
                    })?;
            use damascus_db::budget::Reservation;
            match reservation {
                Reservation::Unlimited => return Ok(None),
                Reservation::Granted(usd) => return Ok(Some(usd)),
                Reservation::ItemSpent { .. } => {
                    return Err(ask(format!(
                        "this item has spent {:.4} USD of its {:.4} USD budget, so no further model or agent call starts; raise the budget or cancel the item",
                        self.item.cost_usd,
                        self.item.cost_budget_usd.unwrap_or_default()
                    )))
                }
                Reservation::ProjectSpent { .. } => {
                    return Err(ask(format!(
                        "project {} has spent its whole daily budget of {:.4} USD today; raise the budget or wait for tomorrow (UTC)",
                        self.project.name,
                        self.project.daily_cost_budget_usd.unwrap_or_default()
                    )))
                }
                Reservation::ClaimLost => {
                    return Err(Verdict::TransientError {
                        reason: "the job's claim was lost before its call could reserve budget".into(),
                    })
                }
                Reservation::Held { .. } if waited_since.elapsed() >= BUDGET_WAIT => {
                    return Err(Verdict::TransientError {
                        reason: format!(
                            "what is left of the budget has been held by other running calls of project {} for {} s; trying again later",
                            self.project.name,
                            BUDGET_WAIT.as_secs()
                        ),
                    })
                }
                Reservation::Held { .. } => {
                    tokio::select! {
                        _ = self.job.cancel.cancelled() => return Err(Verdict::TransientError {
                            reason: "stopped while waiting for budget".into(),
                        }),
                        _ = tokio::time::sleep(BUDGET_POLL) => {}
                    }
                }
            }
        }
    }
}

/// How long a call waits for budget that other running calls hold before its phase is
/// retried later, and how often it looks again meanwhile.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
const BUDGET_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl Loops {
    pub fn new(config: LoopsConfig) -> Result<Loops, llm::LlmError> {
        let llm = config.llm.clone().map(llm::LlmClient::new).transpose()?;
        Ok(Loops {
            inner: Arc::new(Inner { config, llm }),
        })
    }
}

impl PhaseRunner for Loops {
    fn run(&self, job: JobContext) -> PhaseFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let input = match load(&job).await {
                Ok(input) => input,
                Err(e) => {
                    return Verdict::TransientError {
                        reason: e.to_string(),
                    }
                    .into()
                }
            };
            if input.item.phase != job.phase {
                // The item moved on (cancelled, moved by hand) after the job was queued:
                // do nothing; ending the claim drops the job.
                return Verdict::pass().into();
            }
            let _item_lock = match lock_item_dir(&inner.config, &input).await {
                Ok(lock) => lock,
                Err(e) => {
                    return Verdict::TransientError {
                        reason: format!("cannot lock the item's worktree: {e}"),
                    }
                    .into()
                }
            };
            let report = match job.phase {
                Phase::Spec => spec_phase::run(&inner, &input).await,
                Phase::Build => build_phase::run(&inner, &input).await,
                Phase::Review => review_phase::run(&inner, &input).await,
                other => Verdict::Fail {
                    reason: format!("no loop runs phase {other}"),
                    log_tail: String::new(),
                }
                .into(),
            };
            for cost in &report.costs {
                damascus_metrics::spent(&input.project.name, cost.source.as_str(), cost.usd);
            }
            // What is stored and sent on never holds a secret of this deployment.
            scrub::Secrets::from_config(&inner.config).report(report)
        })
    }
}

async fn load(job: &JobContext) -> Result<PhaseInput, damascus_db::DbError> {
    let item = damascus_db::items::get_item(&job.pool, job.item_id).await?;
    let project = damascus_db::projects::get_project(&job.pool, item.project_id).await?;
    Ok(PhaseInput {
        job: job.clone(),
        item,
        project,
    })
}

/// The verdict for a forge call that failed (a conflict is the caller's to judge): a
/// forge that is down or not ready is retried; one that refuses what was asked (a bad
/// token, no such repository, a branch missing) will refuse again, so a person is asked
/// at once instead of after every retry.
pub(crate) fn forge_failure(what: &str, error: damascus_forge::ForgeError) -> Verdict {
    match error {
        // A forge's "come back later" is waited out, not counted (and not retried early).
        damascus_forge::ForgeError::RateLimited {
            host,
            until,
            detail,
        } => Verdict::Deferred {
            reason: format!(
                "{what}: waiting for {host}'s rate limit until {} ({detail})",
                chrono::DateTime::<chrono::Utc>::from(until).format("%H:%M:%S UTC")
            ),
            until,
        },
        damascus_forge::ForgeError::Other(detail) => Verdict::NeedsHuman {
            question: format!("{what}: {detail}. Fix it, then answer to try again"),
            context: String::new(),
        },
        other => Verdict::TransientError {
            reason: format!("{what}: {other}"),
        },
    }
}

fn merge_style(project: &Project) -> damascus_forge::MergeStyle {
    match project.merge_method {
        damascus_core::MergeMethod::Merge => damascus_forge::MergeStyle::Merge,
        damascus_core::MergeMethod::Squash => damascus_forge::MergeStyle::Squash,
        damascus_core::MergeMethod::Rebase => damascus_forge::MergeStyle::Rebase,
    }
}

/// The forge a project's pull requests live on, as a phase of `input` calls it: its
/// rate-limit deadlines kept in the database for every process (`forge_guard`).
pub(crate) fn forge_for(
    input: &PhaseInput,
    config: &LoopsConfig,
) -> Result<Box<dyn Forge>, Verdict> {
    let forge = project_forge(&input.project, config, &input.job.pool)?;
    Ok(Box::new(forge_guard::GuardedForge::new(
        forge,
        input.job.pool.clone(),
    )))
}

fn project_forge(
    project: &Project,
    config: &LoopsConfig,
    pool: &sqlx::PgPool,
) -> Result<Box<dyn Forge>, Verdict> {
    let ask = |question: String| Verdict::NeedsHuman {
        question,
        context: String::new(),
    };
    match project.forge_kind {
        ForgeKind::Local => Ok(Box::new(
            LocalForge::new(&project.repository, config.identity.clone())
                .with_git_timeout(config.git_timeout),
        )),
        ForgeKind::Gitea => {
            let (Some(url), Some(repo)) = (&project.forge_url, &project.forge_repo) else {
                return Err(ask(format!(
                    "project {} is on Gitea but has no --forge-url or --forge-repo",
                    project.name
                )));
            };
            let Some(token) = &config.gitea_token else {
                return Err(ask(
                    "this worker has no Gitea token; set DAMASCUS_GITEA_TOKEN to a token with write access to the repository"
                        .into(),
                ));
            };
            damascus_forge::GiteaForge::new(url, repo, token, merge_style(project))
                .map(|f| Box::new(f) as Box<dyn Forge>)
                .map_err(|e| ask(e.to_string()))
        }
        ForgeKind::Github => {
            let Some(repo) = &project.forge_repo else {
                return Err(ask(format!(
                    "project {} is on GitHub but has no --forge-repo",
                    project.name
                )));
            };
            let Some(token) = &config.github_token else {
                return Err(ask(
                    "this worker has no GitHub token; set DAMASCUS_GITHUB_TOKEN to a token that may open and merge pull requests"
                        .into(),
                ));
            };
            let api = project
                .forge_url
                .as_deref()
                .unwrap_or("https://api.github.com");
            damascus_forge::GithubForge::new(api, repo, token, merge_style(project))
                .map(|f| {
                    let turns = Arc::new(forge_guard::DbWriteTurns { pool: pool.clone() });
                    Box::new(
                        f.with_write_gap(config.github_write_gap)
                            .with_write_turns(turns),
                    ) as Box<dyn Forge>
                })
                .map_err(|e| ask(e.to_string()))
        }
    }
}

/// What the item's people said so far, for the next prompt, oldest first: each question
/// with the output that led to it and the answer, under a heading of its own.
pub(crate) async fn answers(input: &PhaseInput) -> String {
    let issues = damascus_db::items::human_issues_for_item(&input.job.pool, input.item.id)
        .await
        .unwrap_or_default();
    guidance(&issues)
}

fn guidance(issues: &[damascus_db::items::HumanIssue]) -> String {
    let mut text = String::new();
    for issue in issues {
        let Some(answer) = &issue.answer else {
            continue;
        };
        text.push_str(&format!(
            "\n### Damascus asked\n{}\n",
            issue.question.trim()
        ));
        if !issue.context.trim().is_empty() {
            text.push_str(&format!(
                "\nThe output that led to the question:\n```\n{}\n```\n",
                issue.context.trim_end()
            ));
        }
        text.push_str(&format!(
            "\n### {} answered\n{}\n",
            issue.answered_by.as_deref().unwrap_or("A person"),
            answer.trim()
        ));
    }
    if text.is_empty() {
        text
    } else {
        format!("\n## Guidance from the people responsible (follow it)\n{text}")
    }
}

pub(crate) fn report(verdict: Verdict, costs: Vec<CostEntry>) -> PhaseReport {
    PhaseReport::new(verdict, costs)
}

/// The verdict for a git command that failed: worth retrying, with what was being done.
pub(crate) fn transient(what: &str) -> impl FnOnce(damascus_git::GitError) -> Verdict + '_ {
    move |e| Verdict::TransientError {
        reason: format!("{what}: {e}"),
    }
}

pub(crate) fn fail(reason: impl Into<String>, log_tail: impl Into<String>) -> Verdict {
    Verdict::Fail {
        reason: reason.into(),
        log_tail: log_tail.into(),
    }
}
