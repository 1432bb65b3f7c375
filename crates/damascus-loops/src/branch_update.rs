//! Bringing a branch that fell behind its base up to date: a merge of the base into it,
//! or a rebase onto it, with the conflicts of a merge left in the worktree for the
//! agent. Used by the merge queue's head and by a build that starts from an old branch.

use damascus_core::{BranchUpdate, Verdict};
use damascus_git::Git;

use crate::transient;

/// How bringing a branch up to date went.
pub(crate) enum Update {
    /// The commit to test (the branch head itself when it was up to date).
    Done(String),
    /// A merge is in progress in the worktree with conflicts in these files.
    Conflicts(Vec<String>),
}

/// Brings the commit checked out in `tree` up to date with `onto`: nothing to do when
/// it contains `onto`; else a rebase (per project) or a merge. A rebase that conflicts
/// is given up for a merge, so that a conflict is one merge for the agent to resolve.
pub(crate) async fn update(
    tree: &Git,
    onto: &str,
    method: BranchUpdate,
    message: &str,
) -> Result<Update, Verdict> {
    let current = tree.is_ancestor(onto, "HEAD").await.map_err(transient(
        "cannot compare the branch with the default branch",
    ))?;
    let head = || async {
        tree.run(&["rev-parse", "HEAD"])
            .await
            .map_err(transient("cannot read the branch head"))
    };
    if current {
        return Ok(Update::Done(head().await?));
    }
    if method == BranchUpdate::Rebase {
        let start = head().await?;
        if tree.run(&["rebase", "--quiet", onto]).await.is_ok() {
            return Ok(Update::Done(head().await?));
        }
        let _ = tree.run(&["rebase", "--abort"]).await;
        tree.run(&["checkout", "--quiet", "--force", "--detach", &start])
            .await
            .map_err(transient("cannot return to the branch head"))?;
    }
    if tree
        .run(&["merge", "--no-edit", "-m", message, onto])
        .await
        .is_ok()
    {
        return Ok(Update::Done(head().await?));
    }
    let files = tree
        .run(&["diff", "--name-only", "--diff-filter=U"])
        .await
        .map_err(transient("cannot list the merge's conflicts"))?;
    if files.is_empty() {
        let _ = tree.run(&["merge", "--abort"]).await;
        return Err(Verdict::TransientError {
            reason: format!("cannot merge {onto} into the branch"),
        });
    }
    Ok(Update::Conflicts(
        files.lines().map(str::to_owned).collect(),
    ))
}
