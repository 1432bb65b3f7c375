//! The code-builder. Idempotent: the branch is `damascus/<project>-<item>`; a second
//! run starts from what the first pushed (or from the default branch), a run whose
//! agent changes nothing but whose branch already holds commits passes again, and the
//! forge returns the PR already open for the branch instead of opening another.

use damascus_core::{BranchUpdate, PhaseOutput, PhaseReport, Spec, Verdict};

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
    let forge = forge_for(&input.project, config)?;
    let project = &input.project;
    let branch = input.branch();
    let base = format!("origin/{}", project.default_branch);
    let dir = input.worktree_dir(config, "");
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
    let conflicts = catch_up_with_base(&tree, &base).await?;

    let mut prompt = spec.to_prompt(&input.item.title);
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

    let log_name = format!("build-{}", input.job.attempt);
    let run = match crate::agent::run(inner, input, prompt, &dir, "build", &log_name).await {
        Ok(run) => run,
        Err(failure) => return Ok(report(failure.verdict, failure.costs)),
    };
    let (costs, tail) = (run.costs, run.tail);

    // A conflict handed to the agent must be resolved, not committed with its markers.
    let unresolved = crate::agent::unresolved(&dir, &conflicts);
    if !unresolved.is_empty() {
        let _ = tree.run(&["merge", "--abort"]).await;
        return Ok(report(
            fail(
                format!(
                    "the agent left conflict markers in {}; resolve the conflicts with {}",
                    unresolved.join(", "),
                    project.default_branch
                ),
                tail,
            ),
            costs,
        ));
    }
    // What the agent spent is recorded whatever happens after it ran.
    let published = async {
        let message = format!(
            "{}\n\nDamascus item {}, build attempt {}.",
            input.item.title, input.item.id, input.job.attempt
        );
        let committed = tree
            .commit_all(&message)
            .await
            .map_err(transient("cannot commit"))?;
        if committed.is_none() {
            let ahead = tree
                .run(&["rev-list", "--count", &format!("{base}..HEAD")])
                .await
                .map_err(transient("cannot compare with the default branch"))?;
            if ahead == "0" {
                return Err(fail("the agent wrote nothing: no file changed", tail));
            }
        }
        tree.run(&[
            "push",
            "--quiet",
            "--force-with-lease",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ])
        .await
        .map_err(transient("cannot push the branch"))?;
        let pr = forge
            .open_or_find(
                &branch,
                &project.default_branch,
                &input.item.title,
                &spec.summary,
            )
            .await
            .map_err(|e| crate::forge_failure("cannot open the pull request", e))?;
        let _ = forge
            .comment(
                &branch,
                &format!(
                    "damascus: build attempt {} pushed {}",
                    input.job.attempt, pr.head
                ),
            )
            .await;
        Ok(Verdict::Pass(PhaseOutput {
            branch: Some(branch),
            pr_url: Some(pr.url),
            ..PhaseOutput::default()
        }))
    }
    .await;
    match published {
        Ok(verdict) | Err(verdict) => Ok(report(verdict, costs)),
    }
}
