//! The local forge: a bare repository is the remote, a pull request is a branch in it,
//! merging is a merge commit on the base branch (first parent the old base, second the
//! tested head), and comments are git notes (`refs/notes/damascus`) on the branch head.
//!
//! A merge puts exactly the tested commit's tree on the base branch, or nothing: the
//! merge's tree is computed (`git merge-tree`) and must equal the tested head's tree
//! (else the base holds changes the test never saw: `BaseMoved`), and the base branch
//! moves only by a compare-and-swap (`git update-ref NEW OLD`), so two merges at once
//! cannot lose each other's work, and only when the PR head is still the commit that
//! was tested.

use std::path::PathBuf;
use std::time::Duration;

use damascus_git::{Git, GitError, Identity};

use crate::{Forge, ForgeError, ForgeFuture, MergeOutcome, PrState, PullRequest};

#[derive(Debug, Clone)]
pub struct LocalForge {
    remote: PathBuf,
    identity: Identity,
    git_timeout: Duration,
}

impl From<GitError> for ForgeError {
    fn from(e: GitError) -> ForgeError {
        match e {
            // A git that hung (a stalled disk, a lock held elsewhere) may finish next time.
            e @ GitError::TimedOut { .. } => ForgeError::Transient(e.to_string()),
            e => ForgeError::Other(e.to_string()),
        }
    }
}

impl LocalForge {
    pub fn new(remote: impl Into<PathBuf>, identity: Identity) -> LocalForge {
        LocalForge {
            remote: remote.into(),
            identity,
            git_timeout: damascus_git::DEFAULT_TIMEOUT,
        }
    }

    /// The longest one of its git commands may run.
    pub fn with_git_timeout(mut self, timeout: Duration) -> LocalForge {
        self.git_timeout = timeout;
        self
    }

    fn git(&self) -> Git {
        Git::new(&self.remote, self.identity.clone()).with_timeout(self.git_timeout)
    }

    fn url(&self, branch: &str) -> String {
        format!("local://{}#{branch}", self.remote.display())
    }

    async fn head(&self, branch: &str) -> Result<Option<String>, ForgeError> {
        Ok(self.git().resolve(&format!("refs/heads/{branch}")).await?)
    }

    async fn merge_now(
        &self,
        branch: &str,
        base: &str,
        expected: &str,
        message: &str,
    ) -> Result<MergeOutcome, ForgeError> {
        let git = self.git();
        let head = self
            .head(branch)
            .await?
            .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
        let base_ref = format!("refs/heads/{base}");
        let old_base = git.resolve(&base_ref).await?.ok_or_else(|| {
            ForgeError::Other(format!(
                "base branch {base} does not exist in {}",
                self.remote.display()
            ))
        })?;
        if git.is_ancestor(&head, &old_base).await? {
            return Ok(MergeOutcome::AlreadyMerged);
        }
        if head != expected {
            return Err(ForgeError::HeadMoved {
                expected: expected.to_owned(),
                actual: head,
            });
        }
        // The merge's tree, computed without a worktree. It must be the tested commit's
        // own tree: then the base holds exactly what was tested after the merge.
        let (code, out) = git
            .run_for_answer(&[
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                &old_base,
                expected,
            ])
            .await?;
        let mut lines = out.lines();
        let merged_tree = lines.next().unwrap_or_default().to_owned();
        match code {
            Some(0) => {}
            Some(1) => {
                let files: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
                return Err(ForgeError::Conflict {
                    base: base.to_owned(),
                    detail: format!("conflicts in {}", files.join(", ")),
                });
            }
            _ => {
                return Err(ForgeError::Other(format!(
                    "git merge-tree failed in {}: {out}",
                    self.remote.display()
                )))
            }
        }
        let tested_tree = git
            .run(&["rev-parse", &format!("{expected}^{{tree}}")])
            .await?;
        if merged_tree != tested_tree {
            return Err(ForgeError::BaseMoved {
                base: base.to_owned(),
                detail: format!("holds changes that the tested commit {expected} lacks"),
            });
        }
        let commit = git
            .run_with_stdin(
                &[
                    "commit-tree",
                    &merged_tree,
                    "-p",
                    &old_base,
                    "-p",
                    expected,
                    "-F",
                    "-",
                ],
                Some(message),
            )
            .await?;
        // Compare-and-swap: fails if the base moved since we read it.
        match git
            .run(&["update-ref", &base_ref, &commit, &old_base])
            .await
        {
            Ok(_) => Ok(MergeOutcome::Merged { commit }),
            Err(_) => Err(ForgeError::BaseMoved {
                base: base.to_owned(),
                detail: "moved during the merge".to_owned(),
            }),
        }
    }
}

impl Forge for LocalForge {
    fn open_or_find<'a>(
        &'a self,
        branch: &'a str,
        _base: &'a str,
        _title: &'a str,
        _body: &'a str,
    ) -> ForgeFuture<'a, PullRequest> {
        Box::pin(async move {
            // The branch is the pull request: it exists once the builder pushed it.
            let head = self
                .head(branch)
                .await?
                .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
            Ok(PullRequest {
                branch: branch.to_owned(),
                url: self.url(branch),
                head,
            })
        })
    }

    fn state<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, PrState> {
        Box::pin(async move {
            let Some(head) = self.head(branch).await? else {
                return Ok(PrState::Closed);
            };
            let base_head = self.git().resolve(&format!("refs/heads/{base}")).await?;
            match base_head {
                Some(base_head) if self.git().is_ancestor(&head, &base_head).await? => {
                    Ok(PrState::Merged { head })
                }
                _ => Ok(PrState::Open { head }),
            }
        })
    }

    fn merge<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        expected_head: &'a str,
        message: &'a str,
    ) -> ForgeFuture<'a, MergeOutcome> {
        Box::pin(self.merge_now(branch, base, expected_head, message))
    }

    fn comment<'a>(&'a self, branch: &'a str, text: &'a str) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            let head = self
                .head(branch)
                .await?
                .ok_or_else(|| ForgeError::NotFound(branch.to_owned()))?;
            self.git()
                .run_with_stdin(
                    &["notes", "--ref=damascus", "append", "-F", "-", &head],
                    Some(text),
                )
                .await?;
            Ok(())
        })
    }

    fn wait_for_head<'a>(
        &'a self,
        branch: &'a str,
        _base: &'a str,
        commit: &'a str,
        _within: Duration,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            // The branch is the pull request: its head is what was pushed, at once.
            match self.head(branch).await? {
                Some(head) if head == commit => Ok(()),
                Some(head) => Err(ForgeError::HeadMoved {
                    expected: commit.to_owned(),
                    actual: head,
                }),
                None => Err(ForgeError::NotFound(branch.to_owned())),
            }
        })
    }

    fn limit_key(&self) -> Option<crate::LimitKey> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damascus_git::init_bare_with_files;

    async fn setup() -> (tempfile::TempDir, LocalForge, Git) {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.git");
        init_bare_with_files(&remote, &[("a.txt", "one\n")], &Identity::default())
            .await
            .unwrap();
        let clone = dir.path().join("clone");
        Git::new(dir.path(), Identity::default())
            .run(&[
                "clone",
                "--quiet",
                &remote.to_string_lossy(),
                &clone.to_string_lossy(),
            ])
            .await
            .unwrap();
        (
            dir,
            LocalForge::new(remote, Identity::default()),
            Git::new(clone, Identity::default()),
        )
    }

    #[test]
    fn a_git_that_timed_out_is_worth_retrying() {
        let timed_out = GitError::TimedOut {
            args: "merge-tree".into(),
            dir: "/srv/web.git".into(),
            after: Duration::from_secs(600),
        };
        assert!(matches!(
            ForgeError::from(timed_out),
            ForgeError::Transient(_)
        ));
    }

    async fn push_change(clone: &Git, branch: &str, file: &str, text: &str) -> String {
        clone
            .run(&["checkout", "--quiet", "-B", branch, "origin/main"])
            .await
            .unwrap();
        std::fs::write(clone.dir().join(file), text).unwrap();
        let sha = clone
            .commit_all(&format!("change {file}"))
            .await
            .unwrap()
            .unwrap();
        clone
            .run(&[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ])
            .await
            .unwrap();
        sha
    }

    #[tokio::test]
    async fn open_merge_and_merge_again() {
        let (_dir, forge, clone) = setup().await;
        assert!(matches!(
            forge.open_or_find("feature", "main", "t", "b").await,
            Err(ForgeError::NotFound(_))
        ));
        let sha = push_change(&clone, "feature", "b.txt", "two\n").await;
        let pr = forge
            .open_or_find("feature", "main", "t", "b")
            .await
            .unwrap();
        assert_eq!(pr.head, sha);
        assert_eq!(
            forge
                .open_or_find("feature", "main", "t", "b")
                .await
                .unwrap(),
            pr
        );
        assert_eq!(
            forge.state("feature", "main").await.unwrap(),
            PrState::Open { head: sha.clone() }
        );
        forge
            .comment("feature", "review passed: `cargo test` exit 0")
            .await
            .unwrap();

        let MergeOutcome::Merged { commit } = forge
            .merge("feature", "main", &sha, "Merge feature")
            .await
            .unwrap()
        else {
            panic!("expected a merge");
        };
        let remote = forge.git();
        assert_eq!(
            remote.resolve("refs/heads/main").await.unwrap(),
            Some(commit.clone())
        );
        assert_eq!(
            remote
                .run(&["rev-list", "--parents", "-n1", &commit])
                .await
                .unwrap()
                .split(' ')
                .count(),
            3
        );
        assert_eq!(
            forge.state("feature", "main").await.unwrap(),
            PrState::Merged { head: sha.clone() }
        );
        assert_eq!(
            forge.merge("feature", "main", &sha, "again").await.unwrap(),
            MergeOutcome::AlreadyMerged
        );
        assert_eq!(
            remote.resolve("refs/heads/main").await.unwrap(),
            Some(commit)
        );
    }

    #[tokio::test]
    async fn a_moved_head_or_a_conflict_is_refused() {
        let (_dir, forge, clone) = setup().await;
        let tested = push_change(&clone, "feature", "a.txt", "feature\n").await;
        let moved = push_change(
            &clone,
            "feature",
            "a.txt",
            "feature, changed after the test\n",
        )
        .await;
        match forge.merge("feature", "main", &tested, "m").await {
            Err(ForgeError::HeadMoved { actual, .. }) => assert_eq!(actual, moved),
            other => panic!("{other:?}"),
        }
        let other = push_change(&clone, "other", "a.txt", "other\n").await;
        forge.merge("other", "main", &other, "m").await.unwrap();
        assert!(matches!(
            forge.merge("feature", "main", &moved, "m").await,
            Err(ForgeError::Conflict { .. })
        ));
    }

    /// A branch that merges cleanly but was tested without what main gained since is
    /// refused: the merge would put a tree on main that no test saw.
    #[tokio::test]
    async fn a_head_tested_without_the_current_base_is_refused() {
        let (_dir, forge, clone) = setup().await;
        let tested = push_change(&clone, "feature", "b.txt", "feature\n").await;
        let other = push_change(&clone, "other", "c.txt", "other\n").await;
        forge.merge("other", "main", &other, "m").await.unwrap();
        let main = forge.git().resolve("refs/heads/main").await.unwrap();
        match forge.merge("feature", "main", &tested, "m").await {
            Err(e @ ForgeError::BaseMoved { .. }) => {
                assert!(e.to_string().contains("lacks"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(forge.git().resolve("refs/heads/main").await.unwrap(), main);
        // Brought up to date (main merged into it), the same change merges, and main's
        // tree is exactly the tested one.
        clone
            .run(&["checkout", "--quiet", "feature"])
            .await
            .unwrap();
        clone.run(&["fetch", "--quiet", "origin"]).await.unwrap();
        clone
            .run(&["merge", "--quiet", "--no-edit", "origin/main"])
            .await
            .unwrap();
        clone
            .run(&["push", "--quiet", "origin", "HEAD:refs/heads/feature"])
            .await
            .unwrap();
        let updated = clone.run(&["rev-parse", "HEAD"]).await.unwrap();
        forge.merge("feature", "main", &updated, "m").await.unwrap();
        let git = forge.git();
        assert_eq!(
            git.run(&["rev-parse", "main^{tree}"]).await.unwrap(),
            git.run(&["rev-parse", &format!("{updated}^{{tree}}")])
                .await
                .unwrap()
        );
    }
}
