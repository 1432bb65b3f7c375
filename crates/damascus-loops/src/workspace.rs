//! Where a phase works: a bare cache clone of the project's remote per project, and a
//! git worktree per item (build) or per review, all under the data directory. A
//! second run of the same phase finds its worktree and resets it to the start point,
//! so a run that was killed halfway leaves nothing behind for the next one.
//!
//! Every git command here runs with the deployment's git time limit and, for a Gitea or
//! GitHub project on an http(s) remote, the forge token as git's credential (through
//! `GIT_ASKPASS`; never in the remote URL or a git config).

use std::path::Path;

use damascus_core::ForgeKind;
use damascus_db::projects::Project;
use damascus_git::{Credential, Git, GitResult};

use crate::LoopsConfig;

/// git for a project's repository: the identity, the time limit and the credential its
/// remote needs, in `dir`.
fn project_git(config: &LoopsConfig, project: &Project, dir: &Path) -> GitResult<Git> {
    let git = Git::new(dir, config.identity.clone()).with_timeout(config.git_timeout);
    let http = ["http://", "https://"]
        .iter()
        .any(|scheme| project.repository.starts_with(scheme));
    // GitHub takes an installation or personal token as the password of
    // `x-access-token`; Gitea takes a token as the password of any user name.
    let login = match project.forge_kind {
        ForgeKind::Github => config.github_token.as_ref().map(|t| ("x-access-token", t)),
        ForgeKind::Gitea => config.gitea_token.as_ref().map(|t| ("damascus", t)),
        ForgeKind::Local => None,
    };
    match login {
        Some((user, token)) if http => {
            let credential = Credential::new(&config.data_dir.join("bin"), user, token)?;
            Ok(git.with_credential(credential))
        }
        _ => Ok(git),
    }
}

/// Holds the project's lock while it lives: cloning, fetching and adding worktrees to
/// one cache from several phases (or several worker processes on this machine) at once
/// would trip over git's own lock files.
pub struct Workspace {
    /// git in the cache clone; worktrees get the same settings.
    cache: Git,
    _lock: std::fs::File,
}

impl Workspace {
    /// Makes sure the project's cache clone exists and is up to date with its remote.
    pub async fn open(config: &LoopsConfig, project: &Project) -> GitResult<Workspace> {
        let remote = project.repository.as_str();
        let repos = config.data_dir.join("repos");
        let git = project_git(config, project, &repos)?;
        let project = project.name.as_str();
        tokio::fs::create_dir_all(&repos)
            .await
            .map_err(damascus_git::GitError::Spawn)?;
        let lock_path = repos.join(format!("{project}.lock"));
        let lock = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .expect("the lock task does not panic")
        .map_err(damascus_git::GitError::Spawn)?;
        let cache = repos.join(format!("{project}.git"));
        if !cache.join("HEAD").exists() {
            let scratch = repos.join(format!("{project}.git.cloning"));
            let _ = tokio::fs::remove_dir_all(&scratch).await;
            git.run(&[
                "clone",
                "--quiet",
                "--bare",
                remote,
                &scratch.to_string_lossy(),
            ])
            .await?;
            tokio::fs::rename(&scratch, &cache)
                .await
                .map_err(damascus_git::GitError::Spawn)?;
        }
        let git = git.at(&cache);
        git.run(&["config", "remote.origin.url", remote]).await?;
        git.run(&[
            "config",
            "remote.origin.fetch",
            "+refs/heads/*:refs/remotes/origin/*",
        ])
        .await?;
        git.run(&["fetch", "--quiet", "--prune", "origin"]).await?;
        git.run(&["worktree", "prune"]).await?;
        Ok(Workspace {
            cache: git,
            _lock: lock,
        })
    }

    pub fn cache(&self) -> Git {
        self.cache.clone()
    }

    /// A worktree at `path` on `branch`, reset to `start`: created the first time,
    /// reused (and cleaned) after.
    pub async fn branch_worktree(&self, path: &Path, branch: &str, start: &str) -> GitResult<Git> {
        self.worktree(path, &["-B", branch], start).await
    }

    /// A worktree at `path` with `commit` checked out, detached.
    pub async fn detached_worktree(&self, path: &Path, commit: &str) -> GitResult<Git> {
        self.worktree(path, &["--detach"], commit).await
    }

    async fn worktree(&self, path: &Path, mode: &[&str], start: &str) -> GitResult<Git> {
        let tree = self.cache.at(path);
        if path.join(".git").exists() {
            let mut args = vec!["checkout", "--quiet", "--force"];
            args.extend_from_slice(mode);
            args.push(start);
            tree.run(&args).await?;
        } else {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(damascus_git::GitError::Spawn)?;
            }
            let _ = tokio::fs::remove_dir_all(path).await;
            let path_arg = path.to_string_lossy().into_owned();
            let mut args = vec!["worktree", "add", "--quiet", "--force"];
            args.extend_from_slice(mode);
            args.push(&path_arg);
            args.push(start);
            self.cache().run(&args).await?;
        }
        tree.run(&["reset", "--quiet", "--hard", start]).await?;
        tree.run(&["clean", "--quiet", "-fdx"]).await?;
        Ok(tree)
    }
}
