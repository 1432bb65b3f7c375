//! The reviewer, as the head of its repository's merge queue. Only the head of a queue
//! runs (it holds the queue's named lock); its run:
//!
//! 1. takes up to `merge_batch_size - 1` followers queued behind it with the same test
//!    command;
//! 2. brings the head's branch up to date with the default branch mechanically (merge
//!    it in, or rebase, per project); only a real textual conflict calls the agent,
//!    with the conflicting files, here at the head, where the base cannot move under it
//!    (at most one resolution per turn). The update is pushed to the head's branch;
//! 3. stacks each follower on the result (a follower that conflicts with what is below
//!    it stays queued for its own turn at the head), giving the commits C1..Ck;
//! 4. runs the test command on Ck, the commit that becomes the default branch's tree;
//! 5. on a pass, pushes each follower's commit to its branch and merges the branches in
//!    order, each naming its tested commit, so the default branch ends at Ck's tree;
//!    on a failure, bisects the prefixes C1..Ck to find the first item that breaks the
//!    build, merges the ones before it and sends it back to build with the failing
//!    output; the items after it stay queued;
//! 6. a default branch that moved outside the queue (seen before a merge, or refused
//!    by the forge as not the tested tree) starts again at step 2, not at build.
//!
//! Idempotent: a PR that is already merged passes (a follower merged by a run whose
//! verdict was lost passes in the next batch); the update of a branch is pushed with a
//! lease on the head it started from; and merges name the tested commit. Heads are
//! read from the repository (its fetched branches), never from the forge's pull
//! request, which may show a push seconds late; before each merge the run waits until
//! the pull request shows the commit pushed, so the merge is not refused as "head
//! modified".

use std::path::Path;
use std::time::Duration;

use damascus_core::{
    BatchVerdict, BranchUpdate, CostEntry, MergeQueueState, PhaseReport, Spec, Verdict,
};
use damascus_db::items::WorkItem;
use damascus_db::projects::Project;
use damascus_forge::{Forge, ForgeError, MergeOutcome, PrState};
use damascus_git::Git;

use crate::branch_update::{update, Update};
use crate::process::{self, ProcessEnd, ProcessSpec};
use crate::transient;
use crate::{fail, forge_for, Inner, PhaseInput};

/// How often a run starts over because the default branch moved outside the queue
/// before it gives up with a transient error (retried with backoff).
const MAX_ROUNDS: u32 = 3;

pub async fn run(inner: &Inner, input: &PhaseInput) -> PhaseReport {
    let report = match review(inner, input).await {
        Ok(report) => report,
        Err(verdict) => verdict.into(),
    };
    // Followers this run did not decide for go back to waiting; whatever it decided is
    // recorded with its verdict.
    let _ = damascus_db::merge_queue::mark(
        &input.job.pool,
        input.item.id,
        &[input.item.id],
        MergeQueueState::Waiting,
        None,
    )
    .await;
    report
}

/// One item of a batch: the head first, then its followers in queue order.
#[derive(Debug, Clone)]
struct Member {
    item_id: i64,
    title: String,
    branch: String,
    /// The branch's head on the forge when the run read it.
    head: String,
}

/// The test command that judges an item: the operator's wins over one that came with
/// the story or from the model (a story must not choose how its change is judged).
fn test_command_of(project: &Project, item: &WorkItem) -> Option<String> {
    project
        .test_command
        .clone()
        .or_else(|| item.test_command.clone())
}

fn branch_of(project: &Project, item: &WorkItem) -> String {
    item.branch
        .clone()
        .unwrap_or_else(|| format!("damascus/{}-{}", project.name, item.id))
}

/// What a run decided, before it becomes the report.
struct Outcome {
    head: Verdict,
    batch: Vec<BatchVerdict>,
}

async fn review(inner: &Inner, input: &PhaseInput) -> Result<PhaseReport, Verdict> {
    let project = &input.project;
    let forge = forge_for(input, &inner.config)?;
    let test_command = test_command_of(project, &input.item)
        .ok_or_else(|| fail("the item has no test command; its spec must name one", ""))?;
    let branch = branch_of(project, &input.item);
    match forge.state(&branch, &project.default_branch).await {
        Ok(PrState::Merged { .. }) => return Ok(Verdict::pass().into()),
        Ok(PrState::Closed) => {
            return Err(fail(
                format!("the branch {branch} is gone; build it again"),
                "",
            ))
        }
        Ok(PrState::Open { .. }) => {}
        Err(e) => return Err(crate::forge_failure("cannot read the pull request", e)),
    }
    // Each branch's head as the repository has it, not as the forge's pull request
    // reports it: a forge may show a push seconds late, and a merge or a push lease
    // that named a stale head would be refused.
    let heads = BranchHeads::read(inner, input).await?;
    let head = heads.of(&branch).ok_or_else(|| {
        fail(
            format!("the branch {branch} is gone from the repository; build it again"),
            "",
        )
    })?;
    let mut members = vec![Member {
        item_id: input.item.id,
        title: input.item.title.clone(),
        branch,
        head,
    }];
    let mut already_merged = Vec::new();
    for (member, merged) in followers(input, forge.as_ref(), &heads, &test_command).await {
        if merged {
            already_merged.push(BatchVerdict {
                item_id: member.item_id,
                verdict: Verdict::pass(),
            });
        } else {
            members.push(member);
        }
    }
    let mut costs = Vec::new();
    let mut run = Run {
        inner,
        input,
        forge: forge.as_ref(),
        test_command,
        tests: 0,
    };
    let mut round = 1;
    let outcome = loop {
        match run.round(&mut members, &mut costs).await {
            Ok(outcome) => break outcome,
            Err(RoundEnd::Verdict(verdict)) => {
                return Ok(PhaseReport {
                    verdict,
                    costs,
                    batch: already_merged,
                })
            }
            Err(RoundEnd::BaseMoved(why)) if round < MAX_ROUNDS => {
                tracing::info!(round, "{why}; bringing the head up to date again");
                round += 1;
            }
            Err(RoundEnd::BaseMoved(why)) => {
                return Ok(PhaseReport {
                    verdict: Verdict::TransientError {
                        reason: format!(
                            "{why}, {MAX_ROUNDS} times in a row; the merge queue tries again later"
                        ),
                    },
                    costs,
                    batch: already_merged,
                })
            }
        }
    };
    let mut batch = already_merged;
    batch.extend(outcome.batch);
    Ok(PhaseReport {
        verdict: outcome.head,
        costs,
        batch,
    })
}

/// The followers the head's batch takes, with whether each is merged already (a run
/// whose verdict was lost merged it).
async fn followers(
    input: &PhaseInput,
    forge: &dyn Forge,
    heads: &BranchHeads,
    test_command: &str,
) -> Vec<(Member, bool)> {
    let pool = &input.job.pool;
    let size = input.project.merge_batch_size;
    if size <= 1 {
        return Vec::new();
    }
    let ids = damascus_db::merge_queue::followers(pool, input.item.id, size - 1)
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for id in ids {
        let Ok(item) = damascus_db::items::get_item(pool, id).await else {
            continue;
        };
        let Ok(project) = damascus_db::projects::get_project(pool, item.project_id).await else {
            continue;
        };
        if test_command_of(&project, &item).as_deref() != Some(test_command)
            || project.default_branch != input.project.default_branch
        {
            continue;
        }
        let branch = branch_of(&project, &item);
        let merged = match forge.state(&branch, &project.default_branch).await {
            Ok(PrState::Open { .. }) => false,
            Ok(PrState::Merged { .. }) => true,
            _ => continue,
        };
        let Some(head) = heads.of(&branch) else {
            continue;
        };
        out.push((
            Member {
                item_id: item.id,
                title: item.title,
                branch,
                head,
            },
            merged,
        ));
    }
    out
}

/// The heads of the item branches as the repository has them (read from its cache
/// clone, fetched just now).
struct BranchHeads {
    heads: std::collections::HashMap<String, String>,
}

impl BranchHeads {
    async fn read(inner: &Inner, input: &PhaseInput) -> Result<BranchHeads, Verdict> {
        let workspace = input.workspace(&inner.config).await?;
        let refs = workspace
            .cache()
            .run(&[
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/remotes/origin/damascus/",
            ])
            .await
            .map_err(transient("cannot read the item branches"))?;
        let heads = refs
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter_map(|(commit, name)| {
                let branch = name.strip_prefix("refs/remotes/origin/")?;
                Some((branch.to_owned(), commit.to_owned()))
            })
            .collect();
        Ok(BranchHeads { heads })
    }

    fn of(&self, branch: &str) -> Option<String> {
        self.heads.get(branch).cloned()
    }
}

/// Why a round ended without an outcome.
enum RoundEnd {
    /// The head's verdict, with nothing merged by this round.
    Verdict(Verdict),
    /// The default branch moved outside the queue: bring the head up to date again.
    BaseMoved(String),
}

impl From<Verdict> for RoundEnd {
    fn from(verdict: Verdict) -> RoundEnd {
        RoundEnd::Verdict(verdict)
    }
}

/// How a test run ended.
enum Tested {
    Passed,
    Failed { reason: String, tail: String },
}

struct Run<'a> {
    inner: &'a Inner,
    input: &'a PhaseInput,
    forge: &'a dyn Forge,
    test_command: String,
    /// Test runs so far (the head's log files are numbered by it).
    tests: u32,
}

impl Run<'_> {
    fn project(&self) -> &Project {
        &self.input.project
    }

    async fn mark(&self, members: &[Member], state: MergeQueueState, commit: Option<&str>) {
        let ids: Vec<i64> = members.iter().map(|m| m.item_id).collect();
        if let Err(e) = damascus_db::merge_queue::mark(
            &self.input.job.pool,
            self.input.item.id,
            &ids,
            state,
            commit,
        )
        .await
        {
            tracing::warn!("cannot record the merge queue's state: {e}");
        }
    }

    /// Steps 2 to 5 once, on the default branch as it is now.
    async fn round(
        &mut self,
        members: &mut Vec<Member>,
        costs: &mut Vec<CostEntry>,
    ) -> Result<Outcome, RoundEnd> {
        let project = self.project().clone();
        let config = &self.inner.config;
        self.mark(members, MergeQueueState::Updating, None).await;
        let dir = self.input.worktree_dir(config, "-review");
        let (tree, base) = {
            let workspace = self.input.workspace(config).await?;
            let base = workspace
                .cache()
                .resolve(&format!("origin/{}", project.default_branch))
                .await
                .map_err(transient("cannot read the default branch"))?
                .ok_or_else(|| {
                    crate::forge_failure(
                        "cannot read the default branch",
                        ForgeError::Other(format!(
                            "the repository has no branch {}",
                            project.default_branch
                        )),
                    )
                })?;
            let tree = workspace
                .detached_worktree(&dir, &members[0].head)
                .await
                .map_err(transient("cannot check out the head's branch"))?;
            (tree, base)
        };

        // The head: brought up to date, a conflict resolved here by the agent.
        let updated = self
            .update_head(&tree, &dir, &base, &members[0], costs)
            .await?;
        if updated != members[0].head {
            push(&tree, &[(&members[0], updated.as_str())])
                .await
                .map_err(transient("cannot push the updated branch"))?;
            members[0].head = updated.clone();
        }
        // The followers, each on top of the one before; one that conflicts waits for
        // its own turn at the head.
        let mut chain = vec![updated];
        let mut stacked = vec![members[0].clone()];
        for member in members.iter().skip(1) {
            let below = chain.last().expect("the head is in the chain").clone();
            match stack(&tree, member, &below, project.branch_update).await {
                Ok(Some(commit)) => {
                    chain.push(commit);
                    stacked.push(member.clone());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(item = member.item_id, "cannot stack it: {e}"),
            }
        }
        *members = stacked;

        let top = chain.last().expect("the head is in the chain").clone();
        self.mark(members, MergeQueueState::Testing, Some(&top))
            .await;
        let passed_until = match self.test(&tree, &dir, &top).await? {
            Tested::Passed => members.len(),
            Tested::Failed { reason, tail } if members.len() == 1 => {
                self.comment(
                    &members[0].branch,
                    &format!("`{}` failed on {top}", self.test_command),
                )
                .await;
                return Err(RoundEnd::Verdict(fail(reason, tail)));
            }
            Tested::Failed { reason, tail } => {
                // Bisect the prefixes: the first that fails names the culprit.
                let (mut good, mut bad) = (0usize, members.len());
                let (mut bad_reason, mut bad_tail) = (reason, tail);
                while bad - good > 1 {
                    let mid = (good + bad) / 2;
                    match self.test(&tree, &dir, &chain[mid - 1]).await? {
                        Tested::Passed => good = mid,
                        Tested::Failed { reason, tail } => {
                            bad = mid;
                            bad_reason = reason;
                            bad_tail = tail;
                        }
                    }
                }
                let culprit = &members[bad - 1];
                self.comment(
                    &culprit.branch,
                    &format!(
                        "`{}` failed on {} with the {} item(s) queued before it",
                        self.test_command,
                        chain[bad - 1],
                        bad - 1
                    ),
                )
                .await;
                let failed = fail(
                    format!(
                        "{bad_reason} when tested in the merge queue on top of {} and the items before it",
                        project.default_branch
                    ),
                    bad_tail,
                );
                if bad == 1 {
                    return Err(RoundEnd::Verdict(failed));
                }
                let merged = self.merge(&tree, &base, &members[..good], &chain).await?;
                let mut outcome = verdicts(members, merged);
                outcome.batch.push(BatchVerdict {
                    item_id: culprit.item_id,
                    verdict: failed,
                });
                return Ok(outcome);
            }
        };
        let merged = self
            .merge(&tree, &base, &members[..passed_until], &chain)
            .await?;
        Ok(verdicts(members, merged))
    }

    /// Brings the head's branch (checked out in `tree`) up to date with `base` and
    /// returns the commit to test. A conflict calls the agent.
    async fn update_head(
        &self,
        tree: &Git,
        dir: &Path,
        base: &str,
        head: &Member,
        costs: &mut Vec<CostEntry>,
    ) -> Result<String, RoundEnd> {
        let project = self.project();
        let message = format!("Merge {} into {}", project.default_branch, head.branch);
        let conflicts = match update(tree, base, project.branch_update, &message).await? {
            Update::Done(commit) => return Ok(commit),
            Update::Conflicts(files) => files,
        };
        // The agent's own session, when it can go on: it lives in the build's worktree,
        // so the merge is redone there and the session resolves it with only what is
        // new; otherwise a fresh session resolves it here with the whole spec.
        let build_dir = self.input.worktree_dir(&self.inner.config, "");
        let resume = crate::agent::resumable_session(self.inner, self.input, &build_dir).await;
        let (work, work_dir, conflicts) = match &resume {
            None => (tree.clone(), dir.to_path_buf(), conflicts),
            Some(_) => {
                let _ = tree.run(&["merge", "--abort"]).await;
                let build = tree.at(&build_dir);
                build
                    .run(&[
                        "checkout",
                        "--quiet",
                        "--force",
                        "-B",
                        &head.branch,
                        &head.head,
                    ])
                    .await
                    .map_err(transient(
                        "cannot check out the head in the build's worktree",
                    ))?;
                match update(&build, base, BranchUpdate::Merge, &message).await? {
                    Update::Done(commit) => return Ok(commit),
                    Update::Conflicts(files) => (build, build_dir, files),
                }
            }
        };
        let mut prompt = match &resume {
            Some(_) => crate::agent::RESUMED.to_owned(),
            None => {
                let spec: Option<Spec> = self
                    .input
                    .item
                    .spec
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok());
                match spec {
                    Some(spec) => spec.to_prompt(&self.input.item.title),
                    None => format!("# {}\n\n{}\n", self.input.item.title, self.input.item.body),
                }
            }
        };
        prompt.push_str(&crate::agent::conflicts_section(
            &project.default_branch,
            &conflicts,
        ));
        prompt.push_str(
            "\nThis branch is at the head of the merge queue: resolve the conflicts only; its change is otherwise done.\n",
        );
        let log_name = format!("resolve-{}", self.input.job.attempt);
        let ran = crate::agent::run(
            self.inner,
            self.input,
            prompt,
            &work_dir,
            crate::agents::Task::ResolveConflicts,
            &log_name,
            resume.as_deref(),
        )
        .await;
        let tail = match ran {
            Ok(run) => {
                costs.extend(run.costs);
                run.tail
            }
            Err(failure) => {
                costs.extend(failure.costs);
                let _ = work.run(&["merge", "--abort"]).await;
                return Err(failure.verdict.into());
            }
        };
        let unresolved = crate::agent::unresolved(&work_dir, &conflicts);
        if !unresolved.is_empty() {
            let _ = work.run(&["merge", "--abort"]).await;
            return Err(fail(
                format!(
                    "the agent left conflict markers in {} when resolving the conflicts with {} at the head of the merge queue",
                    unresolved.join(", "),
                    project.default_branch
                ),
                tail,
            )
            .into());
        }
        work.commit_all(&message)
            .await
            .map_err(transient("cannot commit the resolved merge"))?;
        // The review goes on in its own worktree (it checks out what it tests); the
        // worktrees share the cache clone's objects.
        Ok(work
            .run(&["rev-parse", "HEAD"])
            .await
            .map_err(transient("cannot read the resolved merge"))?)
    }

    /// Runs the test command on `commit` in `tree`.
    async fn test(&mut self, tree: &Git, dir: &Path, commit: &str) -> Result<Tested, RoundEnd> {
        tree.run(&["checkout", "--quiet", "--force", "--detach", commit])
            .await
            .map_err(transient("cannot check out the commit to test"))?;
        tree.run(&["clean", "--quiet", "-fdx"])
            .await
            .map_err(transient("cannot clean the worktree"))?;
        self.tests += 1;
        let project = self.project();
        let log_name = if self.tests == 1 {
            format!("review-{}", self.input.job.attempt)
        } else {
            format!("review-{}-{}", self.input.job.attempt, self.tests)
        };
        // The test command runs as written, confined like the agent; nothing from the
        // story is put into it.
        let argv = vec!["/bin/sh".into(), "-c".into(), self.test_command.clone()];
        let confined = crate::sandbox::confine(self.inner, self.input, dir, argv, &[]).await?;
        let end = process::run(
            ProcessSpec {
                argv: confined.argv,
                dir: dir.to_path_buf(),
                env: confined.env,
                stdin: None,
                timeout: Duration::from_secs(project.test_timeout_secs as u64),
                log_file: crate::agent::log_file(self.inner, self.input, &log_name),
                job: Some(self.input.job.clone()),
                user: confined.user,
                stdout_lines: None,
                stop: None,
            },
            &self.input.job.cancel,
        )
        .await;
        confined.handed.release().await;
        let end = end.map_err(|e| Verdict::TransientError {
            reason: e.to_string(),
        })?;
        Ok(match end {
            // The tests have no stop token: only a cancel stops them.
            ProcessEnd::Cancelled | ProcessEnd::Stopped { .. } => {
                return Err(Verdict::TransientError {
                    reason: "the review was stopped".into(),
                }
                .into())
            }
            ProcessEnd::TimedOut { tail } => Tested::Failed {
                reason: format!(
                    "`{}` ran past its {} s limit and was killed",
                    self.test_command, project.test_timeout_secs
                ),
                tail,
            },
            ProcessEnd::Exited { code: Some(0), .. } => Tested::Passed,
            ProcessEnd::Exited { code, tail, .. } => Tested::Failed {
                reason: format!(
                    "`{}` exited with {}",
                    self.test_command,
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| "a signal".into())
                ),
                tail,
            },
        })
    }

    /// Merges `members` in order, each at its commit of `chain`; returns how many were
    /// merged. The default branch must still be `base` before the first merge.
    async fn merge(
        &self,
        tree: &Git,
        base: &str,
        members: &[Member],
        chain: &[String],
    ) -> Result<usize, RoundEnd> {
        let project = self.project();
        self.mark(
            members,
            MergeQueueState::Merging,
            chain
                .get(members.len().saturating_sub(1))
                .map(String::as_str),
        )
        .await;
        let now = tree
            .run(&[
                "ls-remote",
                "origin",
                &format!("refs/heads/{}", project.default_branch),
            ])
            .await
            .map_err(transient("cannot read the default branch"))?;
        if now.split_whitespace().next() != Some(base) {
            return Err(RoundEnd::BaseMoved(format!(
                "{} moved outside the merge queue",
                project.default_branch
            )));
        }
        let with = if members.len() > 1 {
            format!(
                " (tested together with {} queued item(s))",
                members.len() - 1
            )
        } else {
            String::new()
        };
        for (n, (member, commit)) in members.iter().zip(chain).enumerate() {
            // A follower's branch takes its tested commit just before its merge (the
            // head's was pushed when it was brought up to date): a branch is never left
            // holding the changes of items queued before it that did not merge.
            let pushed = if n > 0 && member.head != *commit {
                push(tree, &[(member, commit.as_str())])
                    .await
                    .map_err(|e| format!("cannot push {}: {e}", member.branch))
            } else {
                Ok(())
            };
            let merged = match pushed {
                Ok(()) => {
                    // The merge names the commit pushed, once the forge shows it as the
                    // pull request's head (a merge sent before is refused).
                    let message = format!("Merge {}: {}", member.branch, member.title);
                    match self
                        .forge
                        .wait_for_head(
                            &member.branch,
                            &project.default_branch,
                            commit,
                            self.inner.config.head_wait,
                        )
                        .await
                    {
                        Ok(()) => {
                            self.forge
                                .merge(&member.branch, &project.default_branch, commit, &message)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(why) => Err(ForgeError::Transient(why)),
            };
            let stop = match merged {
                Ok(outcome) => {
                    let merged_as = match outcome {
                        MergeOutcome::Merged { commit } if !commit.is_empty() => {
                            format!(" as {commit}")
                        }
                        _ => String::new(),
                    };
                    self.comment(
                        &member.branch,
                        &format!(
                            "`{}` passed on {commit}{with}; merged{merged_as}",
                            self.test_command
                        ),
                    )
                    .await;
                    continue;
                }
                Err(
                    e @ (ForgeError::BaseMoved { .. }
                    | ForgeError::HeadMoved { .. }
                    | ForgeError::Conflict { .. }),
                ) => RoundEnd::BaseMoved(e.to_string()),
                Err(e) => {
                    RoundEnd::Verdict(crate::forge_failure("cannot merge the pull request", e))
                }
            };
            // What merged before this one stays merged; this one and the rest are
            // tried again (the head's run again, a follower in its own turn).
            if n == 0 {
                return Err(stop);
            }
            return Ok(n);
        }
        Ok(members.len())
    }

    async fn comment(&self, branch: &str, text: &str) {
        let _ = self
            .forge
            .comment(branch, &format!("damascus: {text}"))
            .await;
    }
}

/// The verdicts of a batch whose first `merged` members merged: the head passes (it
/// merged, since a run that merges nothing ends with a verdict of its own), and so do
/// the followers that merged; the others stay queued.
fn verdicts(members: &[Member], merged: usize) -> Outcome {
    Outcome {
        head: Verdict::pass(),
        batch: members
            .iter()
            .take(merged)
            .skip(1)
            .map(|m| BatchVerdict {
                item_id: m.item_id,
                verdict: Verdict::pass(),
            })
            .collect(),
    }
}

/// Stacks a follower on `below`: its branch head brought up to date with it. `None`
/// when they conflict (the follower then waits for its own turn at the head, where a
/// conflict is resolved).
async fn stack(
    tree: &Git,
    member: &Member,
    below: &str,
    method: BranchUpdate,
) -> Result<Option<String>, damascus_git::GitError> {
    tree.run(&["checkout", "--quiet", "--force", "--detach", &member.head])
        .await?;
    tree.run(&["clean", "--quiet", "-fdx"]).await?;
    let message = format!("Merge the merge queue's batch into {}", member.branch);
    match update(tree, below, method, &message).await {
        Ok(Update::Done(commit)) => Ok(Some(commit)),
        Ok(Update::Conflicts(_)) | Err(_) => {
            let _ = tree.run(&["merge", "--abort"]).await;
            Ok(None)
        }
    }
}

/// Pushes each member's new commit to its branch, in one atomic push, each with a
/// lease on the head the run read (a branch that moved meanwhile refuses the push).
/// A rebased branch is rewritten, so the push may replace what the lease names.
async fn push(tree: &Git, updates: &[(&Member, &str)]) -> damascus_git::GitResult<()> {
    let mut args = vec![
        "push".to_owned(),
        "--quiet".to_owned(),
        "--atomic".to_owned(),
    ];
    for (member, _) in updates {
        args.push(format!(
            "--force-with-lease=refs/heads/{}:{}",
            member.branch, member.head
        ));
    }
    args.push("origin".to_owned());
    for (member, commit) in updates {
        args.push(format!("{commit}:refs/heads/{}", member.branch));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tree.run(&args).await.map(|_| ())
}
