//! The code-builder: the agent's run, the commit, the push, the pull request. Each
//! finished step is recorded with the item (`damascus_db::build_steps`) under the
//! claim, so a run after a failure resumes at the step that failed: a push or a forge
//! call that failed after the agent ran is tried again, never the agent (unless its
//! commit is on another host). A forge's rate limit ends the run as
//! `Verdict::Deferred`, waited out without counting an attempt.
//!
//! Idempotent: the branch is `damascus/<project>-<item>`; a second run starts from
//! what the first pushed (or from the default branch), a run whose agent changes
//! nothing but whose branch already holds commits passes again, and the forge returns
//! the PR already open for the branch instead of opening another.

use damascus_core::{BranchUpdate, PhaseOutput, PhaseReport, Spec, Verdict};
use damascus_db::build_steps::BuildSteps;

use crate::branch_update::{update, Update};
use crate::transient;

use crate::{answers, fail, forge_for, report, Inner, PhaseInput};

pub async fn run(inner: &Inner, input: &PhaseInput) -> PhaseReport {
    match build(inner, input).await {
        Ok(report) => report,
        Err(verdict) => verdict.into(),
    }
}

/// A branch from an earlier attempt that the default branch has moved past (others
/// merged while it was away from the merge queue) first takes the default branch in,
/// so this attempt builds on what is there now instead of repeating the conflict. A
/// clean merge is committed at once; a conflicting one is left in progress and its
/// files are returned, for the agent to resolve (the build's commit then ends the
/// merge).
async fn catch_up_with_base(tree: &damascus_git::Git, base: &str) -> Result<Vec<String>, Verdict> {
    let message = format!("Merge {base} into the branch");
    match update(tree, base, BranchUpdate::Merge, &message).await? {
        Update::Done(_) => Ok(Vec::new()),
        Update::Conflicts(files) => Ok(files),
    }
}

async fn build(inner: &Inner, input: &PhaseInput) -> Result<PhaseReport, Verdict> {
    let config = &inner.config;
    let spec: Spec = input
        .item
        .spec
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            fail(
                "the item has no spec to build from; send it back to spec",
                "",
            )
        })?;
    let forge = forge_for(input, config)?;
    let project = &input.project;
    let branch = input.branch();
    let base = format!("origin/{}", project.default_branch);
    let dir = input.worktree_dir(config, "");
    let steps = damascus_db::build_steps::get(&input.job.pool, input.item.id)
        .await
        .map_err(|e| Verdict::TransientError {
            reason: format!("cannot read the build's finished steps: {e}"),
        })?;
    let tree = {
        // The workspace (and its lock) lives only while the worktree is prepared.
        let workspace = input.workspace(config).await?;
        let remote_branch = format!("origin/{branch}");
        let start = match workspace.cache().resolve(&remote_branch).await {
            Ok(Some(_)) => remote_branch,
            _ => base.clone(),
        };
        workspace
            .branch_worktree(&dir, &branch, &start)
            .await
            .map_err(transient("cannot prepare the worktree"))?
    };

    // The agent's work from an earlier run of this build, if it is still here: then
    // only the steps after it run again.
    let kept = match &steps {
        Some(steps) => kept_commit(&tree, steps).await,
        None => None,
    };
    let (commit, costs) = match kept {
        Some(commit) => {
            tracing::info!(%commit, "the agent's work of an earlier run is kept; resuming after it");
            (commit, Vec::new())
        }
        None => match run_agent(inner, input, &spec, &tree, &dir, &base).await? {
            Ok(ran) => ran,
            Err(report) => return Ok(report),
        },
    };

    // What the agent spent is recorded whatever happens after it ran.
    let pushed_before = steps
        .as_ref()
        .filter(|s| s.committed == commit)
        .and_then(|s| s.pushed.clone());
    let pr_before = steps
        .as_ref()
        .filter(|s| s.committed == commit)
        .and_then(|s| s.pr_url.clone());
    let published = async {
        let pool = &input.job.pool;
        let (claim, item) = (input.job.claim, input.item.id);
        if pushed_before.as_deref() != Some(commit.as_str()) {
            tree.run(&[
                "push",
                "--quiet",
                "--force-with-lease",
                "origin",
                &format!("{commit}:refs/heads/{branch}"),
            ])
            .await
            .map_err(transient("cannot push the branch"))?;
            keep_step(damascus_db::build_steps::pushed(pool, claim, item, &commit).await)?;
        }
        let pr_url = match pr_before {
            Some(url) => url,
            None => {
                let pr = forge
                    .open_or_find(
                        &branch,
                        &project.default_branch,
                        &input.item.title,
                        &spec.summary,
                    )
                    .await
                    .map_err(|e| crate::forge_failure("cannot open the pull request", e))?;
                keep_step(
                    damascus_db::build_steps::pull_request(pool, claim, item, &pr.url).await,
                )?;
                let _ = forge
                    .comment(
                        &branch,
                        &format!(
                            "damascus: build attempt {} pushed {commit}",
                            input.job.attempt
                        ),
                    )
                    .await;
                pr.url
            }
        };
        Ok(Verdict::Pass(PhaseOutput {
            branch: Some(branch.clone()),
            pr_url: Some(pr_url),
            ..PhaseOutput::default()
        }))
    }
    .await;
    match published {
        Ok(verdict) | Err(verdict) => Ok(report(verdict, costs)),
    }
}

/// The commit an earlier run of this build left, when it can be used here: one
/// already pushed is on the branch this run checked out; one only committed is in
/// this host's cache (a run on another host cannot see it, and the agent runs again).
async fn kept_commit(tree: &damascus_git::Git, steps: &BuildSteps) -> Option<String> {
    let head = tree.run(&["rev-parse", "HEAD"]).await.ok()?;
    if steps.pushed.as_deref() == Some(head.as_str()) && head == steps.committed {
        return Some(head);
    }
    match tree.resolve(&steps.committed).await {
        Ok(Some(_)) => {
            tree.run(&["reset", "--quiet", "--hard", &steps.committed])
                .await
                .ok()?;
            Some(steps.committed.clone())
        }
        _ => {
            tracing::info!(commit = %steps.committed, "the agent's work of an earlier run is not on this host; the agent runs again");
            None
        }
    }
}

/// A step recorded, or why the run must stop: a claim that no longer holds its slot
/// belongs to another run now. A database error only loses the shortcut for the next
/// run, so the run goes on.
fn keep_step(recorded: damascus_db::DbResult<bool>) -> Result<(), Verdict> {
    match recorded {
        Ok(true) => Ok(()),
        Ok(false) => Err(Verdict::TransientError {
            reason: "the job's claim was lost during the build; another run has it".into(),
        }),
        Err(e) => {
            tracing::warn!("cannot record a finished build step: {e}");
            Ok(())
        }
    }
}

/// The agent's run and its commit: `Ok(Ok((commit, costs)))`, or
/// `Ok(Err(report))` for a run that ended the phase (its costs in the report).
async fn run_agent(
    inner: &Inner,
    input: &PhaseInput,
    spec: &Spec,
    tree: &damascus_git::Git,
    dir: &std::path::Path,
    base: &str,
) -> Result<Result<(String, Vec<damascus_core::CostEntry>), PhaseReport>, Verdict> {
    let project = &input.project;
    let conflicts = catch_up_with_base(tree, base).await?;
    // The agent's own session, when it can go on here: it holds the spec and what the
    // agent did with it, so the prompt is only what is new.
    let resume = crate::agent::resumable_session(inner, input, dir).await;
    let mut prompt = match resume {
        Some(_) => crate::agent::RESUMED.to_owned(),
        None => spec.to_prompt(&input.item.title),
    };
    if let Ok(Some((reason, log_tail))) =
        damascus_db::items::last_failure(&input.job.pool, input.item.id).await
    {
        prompt.push_str(&format!(
            "\n## The previous attempt failed\n{reason}\n\n```\n{log_tail}\n```\nFix this.\n"
        ));
    }
    prompt.push_str(&answers(input).await);
    if !conflicts.is_empty() {
        prompt.push_str(&crate::agent::conflicts_section(
            &project.default_branch,
            &conflicts,
        ));
    }

    if resume.is_some() && prompt == crate::agent::RESUMED {
        prompt.push_str("\nNothing else changed: finish the task as specified.\n");
    }
    let log_name = format!("build-{}", input.job.attempt);
    let run = match crate::agent::run(
        inner,
        input,
        prompt,
        dir,
        crate::agents::Task::Build,
        &log_name,
        resume.as_deref(),
    )
    .await
    {
        Ok(run) => run,
        Err(failure) => return Ok(Err(report(failure.verdict, failure.costs))),
    };
    let (costs, tail) = (run.costs, run.tail);
    let ended =
        |verdict: Verdict, costs: Vec<damascus_core::CostEntry>| Ok(Err(report(verdict, costs)));

    // A conflict handed to the agent must be resolved, not committed with its markers.
    let unresolved = crate::agent::unresolved(dir, &conflicts);
    if !unresolved.is_empty() {
        let _ = tree.run(&["merge", "--abort"]).await;
        return ended(
            fail(
                format!(
                    "the agent left conflict markers in {}; resolve the conflicts with {}",
                    unresolved.join(", "),
                    project.default_branch
                ),
                tail,
            ),
            costs,
        );
    }
    let message = format!(
        "{}\n\nDamascus item {}, build attempt {}.",
        input.item.title, input.item.id, input.job.attempt
    );
    let committed = match tree.commit_all(&message).await {
        Ok(committed) => committed,
        Err(e) => return ended(transient("cannot commit")(e), costs),
    };
    if committed.is_none() {
        let ahead = match tree
            .run(&["rev-list", "--count", &format!("{base}..HEAD")])
            .await
        {
            Ok(ahead) => ahead,
            Err(e) => {
                return ended(
                    transient("cannot compare with the default branch")(e),
                    costs,
                )
            }
        };
        if ahead == "0" {
            return ended(
                fail("the agent wrote nothing: no file changed", tail),
                costs,
            );
        }
    }
    let commit = match tree.run(&["rev-parse", "HEAD"]).await {
        Ok(commit) => commit,
        Err(e) => return ended(transient("cannot read the build's commit")(e), costs),
    };
    let recorded = damascus_db::build_steps::committed(
        &input.job.pool,
        input.job.claim,
        input.item.id,
        &commit,
    )
    .await;
    if let Err(verdict) = keep_step(recorded) {
        return ended(verdict, costs);
    }
    Ok(Ok((commit, costs)))
}
