//! damascus-git runs the git command line for the forge and the loops.
//!
//! Reads (resolving a revision, ancestry) go through gix, in-process, with an isolated
//! configuration. Writes go through the git command line, because gix does not cover
//! them yet: clone, fetch, worktrees, commits, pushes, merges with conflict detection,
//! compare-and-swap ref updates and notes (docs/ARCHITECTURE.md keeps this list). Every
//! git call passes argv directly (no shell), text that came from a story (commit
//! messages, comments) goes through stdin, and git runs with a clean environment so no
//! user configuration or credential helper changes what it does.
//!
//! Architecture invariant: no database, no HTTP; only this crate starts `git`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git ({0}); install git (Debian/Ubuntu: apt-get install git)")]
    Spawn(std::io::Error),
    #[error("cannot read the repository in {dir}: {detail}")]
    Read { dir: PathBuf, detail: String },
    #[error("git {args} failed in {dir}: {stderr}")]
    Failed {
        args: String,
        dir: PathBuf,
        stderr: String,
        code: Option<i32>,
    },
}

pub type GitResult<T> = Result<T, GitError>;

fn read_error(dir: &Path, e: impl std::fmt::Display) -> GitError {
    GitError::Read {
        dir: dir.to_path_buf(),
        detail: redact_credentials(&e.to_string()),
    }
}

/// Who commits and merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            name: "Damascus".into(),
            email: "damascus@localhost".into(),
        }
    }
}

/// git, run in one directory.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
    identity: Identity,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>, identity: Identity) -> Git {
        Git {
            dir: dir.into(),
            identity,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command
            .arg("-c")
            .arg(format!("user.name={}", self.identity.name))
            .arg("-c")
            .arg(format!("user.email={}", self.identity.email))
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "advice.detachedHead=false",
                "-c",
                "core.hooksPath=/dev/null",
            ])
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .kill_on_drop(true);
        command
    }

    /// Runs `git ARGS`, returning trimmed stdout.
    pub async fn run(&self, args: &[&str]) -> GitResult<String> {
        self.run_with_stdin(args, None).await
    }

    /// Runs `git ARGS` with `stdin` as standard input (for messages and notes).
    pub async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> GitResult<String> {
        let mut command = self.command(args);
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(GitError::Spawn)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(GitError::Spawn)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(GitError::Spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(GitError::Failed {
                args: redact_credentials(&args.join(" ")),
                dir: self.dir.clone(),
                stderr: redact_credentials(String::from_utf8_lossy(&out.stderr).trim()),
                code: out.status.code(),
            })
        }
    }

    /// Runs `git ARGS` and returns its exit code and its stdout, whatever the code (for
    /// commands whose non-zero exit is an answer, such as `merge-tree` on a conflict).
    pub async fn run_for_answer(&self, args: &[&str]) -> GitResult<(Option<i32>, String)> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(GitError::Spawn)?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }

    /// Opens the repository with gix, ignoring user and system configuration as the
    /// git command line here does.
    fn open_for_reading(&self) -> GitResult<gix::Repository> {
        gix::open_opts(&self.dir, gix::open::Options::isolated())
            .map_err(|e| read_error(&self.dir, e))
    }

    /// The commit `rev` names, or `None` when it names none (like
    /// `git rev-parse --verify --quiet REV^{commit}`).
    pub async fn resolve(&self, rev: &str) -> GitResult<Option<String>> {
        let git = self.clone();
        let rev = rev.to_owned();
        tokio::task::spawn_blocking(move || {
            let repo = git.open_for_reading()?;
            Ok(resolve_commit(&repo, &rev).map(|id| id.to_string()))
        })
        .await
        .expect("the read task does not panic")
    }

    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`.
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> GitResult<bool> {
        let git = self.clone();
        let (ancestor, descendant) = (ancestor.to_owned(), descendant.to_owned());
        tokio::task::spawn_blocking(move || {
            let repo = git.open_for_reading()?;
            let missing = |rev: &str| read_error(&git.dir, format!("{rev} names no commit"));
            let one = resolve_commit(&repo, &ancestor).ok_or_else(|| missing(&ancestor))?;
            let two = resolve_commit(&repo, &descendant).ok_or_else(|| missing(&descendant))?;
            if one == two {
                return Ok(true);
            }
            match repo.merge_base(one, two) {
                Ok(base) => Ok(base.is_some_and(|base| base.detach() == one)),
                Err(e) => Err(read_error(&git.dir, e)),
            }
        })
        .await
        .expect("the read task does not panic")
    }

    /// Stages everything and commits with `message` (from stdin); `None` when there was
    /// nothing to commit. A merge in progress is always concluded, even when its result
    /// leaves the tree as it was (the branch then records that it took the other side).
    pub async fn commit_all(&self, message: &str) -> GitResult<Option<String>> {
        self.run(&["add", "--all"]).await?;
        let staged = self.run(&["status", "--porcelain"]).await?;
        let merging = self
            .run(&["rev-parse", "-q", "--verify", "MERGE_HEAD"])
            .await
            .is_ok();
        if staged.is_empty() && !merging {
            return Ok(None);
        }
        self.run_with_stdin(
            &["commit", "--quiet", "--no-verify", "-F", "-"],
            Some(message),
        )
        .await?;
        Ok(Some(self.run(&["rev-parse", "HEAD"]).await?))
    }
}

fn resolve_commit(repo: &gix::Repository, rev: &str) -> Option<gix::ObjectId> {
    let id = repo.rev_parse_single(rev).ok()?;
    let commit = id.object().ok()?.peel_to_commit().ok()?;
    Some(commit.id)
}

/// Masks the user-info part of every URL in `text` (`https://user:token@host/…` →
/// `https://***@host/…`), so that a remote with a token in it never reaches an error,
/// an event or a log.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(sign) => {
                out.push_str("***");
                out.push_str(&after[sign..end]);
            }
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Creates a bare repository at `path` whose `main` holds `files` (for demos and tests).
pub async fn init_bare_with_files(
    path: &Path,
    files: &[(&str, &str)],
    identity: &Identity,
) -> GitResult<()> {
    let scratch = path.with_extension("seed");
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(GitError::Spawn)?;
    let seed = Git::new(&scratch, identity.clone());
    seed.run(&["init", "--quiet", "--initial-branch=main"])
        .await?;
    for (name, contents) in files {
        let file = scratch.join(name);
        if let Some(parent) = file.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(GitError::Spawn)?;
        }
        tokio::fs::write(&file, contents)
            .await
            .map_err(GitError::Spawn)?;
        #[cfg(unix)]
        if name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
                .await
                .map_err(GitError::Spawn)?;
        }
    }
    seed.commit_all("Initial commit").await?;
    let parent = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(GitError::Spawn)?;
    Git::new(parent, identity.clone())
        .run(&[
            "clone",
            "--quiet",
            "--bare",
            &scratch.to_string_lossy(),
            &path.to_string_lossy(),
        ])
        .await?;
    tokio::fs::remove_dir_all(&scratch)
        .await
        .map_err(GitError::Spawn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_messages_go_through_stdin_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path(), Identity::default());
        git.run(&["init", "--quiet"]).await.unwrap();
        assert_eq!(git.commit_all("nothing").await.unwrap(), None);
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        let message = "Add $(rm -rf /) `whoami`; echo 'quoted' \"twice\"";
        let sha = git.commit_all(message).await.unwrap().unwrap();
        assert_eq!(
            git.run(&["log", "-1", "--format=%B"]).await.unwrap(),
            message
        );
        assert_eq!(git.resolve("HEAD").await.unwrap(), Some(sha.clone()));
        assert_eq!(git.resolve("no-such-branch").await.unwrap(), None);
        assert!(git.is_ancestor(&sha, "HEAD").await.unwrap());
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            redact_credentials("clone https://bot:ghp_secret@github.com/a/b.git into /x"),
            "clone https://***@github.com/a/b.git into /x"
        );
        assert_eq!(
            redact_credentials("fetch /srv/git/web.git"),
            "fetch /srv/git/web.git"
        );
        assert_eq!(
            redact_credentials("ssh://git@host/x https://h/y"),
            "ssh://***@host/x https://h/y"
        );
    }

    #[tokio::test]
    async fn bare_repository_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("remote.git");
        init_bare_with_files(
            &bare,
            &[("README.md", "hi\n"), ("test.sh", "#!/bin/sh\nexit 0\n")],
            &Identity::default(),
        )
        .await
        .unwrap();
        let git = Git::new(&bare, Identity::default());
        assert!(git.resolve("refs/heads/main").await.unwrap().is_some());
        assert_eq!(git.run(&["show", "main:README.md"]).await.unwrap(), "hi");
    }
}
