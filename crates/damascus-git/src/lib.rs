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
//! Every git run has a time limit (`Git::with_timeout`): git runs in a process group of
//! its own, and the whole group (git and the helpers it starts: `git-remote-http`,
//! `ssh`) is killed when the limit passes or when the caller stops waiting, so a remote
//! that never answers cannot hold a phase, its lock or its slot for ever.
//!
//! A forge credential reaches git only through `GIT_ASKPASS` (`Credential`): a fixed
//! script answers git's prompts from two variables set in git's environment alone, so
//! the secret is never in an argv, a URL or a git config file.
//!
//! Architecture invariant: no database, no HTTP; only this crate starts `git`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How long one git command may run unless the caller says otherwise: long enough for a
/// first clone of a big repository, short enough that a silent remote is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

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
    #[error("cannot write git's askpass program {path}: {source}; check that the directory is writable by this user")]
    Askpass {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git {args} in {dir} did not finish within {after:?} and was stopped; check that the remote is reachable from this machine and answers (network, proxy, firewall, the forge itself), or raise the git time limit (DAMASCUS_GIT_TIMEOUT_SECS) for a remote that is only slow")]
    TimedOut {
        args: String,
        dir: PathBuf,
        after: Duration,
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

/// A username and secret for http(s) remotes, handed to git by its askpass program.
#[derive(Clone)]
pub struct Credential {
    askpass: PathBuf,
    username: String,
    password: String,
}

/// The askpass program: git runs it with its prompt as the only argument
/// (`Username for 'https://host': `, `Password for 'https://user@host': `).
const ASKPASS_SCRIPT: &str = "#!/bin/sh\n\
# Written by Damascus: answers git's prompts from the environment Damascus gave git.\n\
case \"$1\" in\n\
Username*) printf '%s\\n' \"$DAMASCUS_GIT_USERNAME\" ;;\n\
*) printf '%s\\n' \"$DAMASCUS_GIT_PASSWORD\" ;;\n\
esac\n";

impl Credential {
    /// A credential answered by the askpass program in `dir` (`git-askpass.sh`, mode
    /// 0700), which is written unless it is there already. The program holds no secret.
    pub fn new(
        dir: &Path,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> GitResult<Credential> {
        let askpass = dir.join("git-askpass.sh");
        install_askpass(dir, &askpass).map_err(|source| GitError::Askpass {
            path: askpass.clone(),
            source,
        })?;
        Ok(Credential {
            askpass,
            username: username.into(),
            password: password.into(),
        })
    }
}

fn install_askpass(dir: &Path, askpass: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::read_to_string(askpass).ok();
    let mode = std::fs::metadata(askpass).map(|m| m.permissions().mode() & 0o777);
    if current.as_deref() == Some(ASKPASS_SCRIPT) && mode.ok() == Some(0o700) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // Written aside and renamed: a git running the old file meanwhile is not disturbed,
    // and no reader ever sees half a script.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = dir.join(format!("git-askpass.sh.{}.{write}", std::process::id()));
    std::fs::write(&scratch, ASKPASS_SCRIPT)?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))?;
    std::fs::rename(&scratch, askpass)
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("askpass", &self.askpass)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// git, run in one directory.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
    identity: Identity,
    timeout: Duration,
    credential: Option<Credential>,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>, identity: Identity) -> Git {
        Git {
            dir: dir.into(),
            identity,
            timeout: DEFAULT_TIMEOUT,
            credential: None,
        }
    }

    /// The longest one git command may run before it is killed with its helpers.
    pub fn with_timeout(mut self, timeout: Duration) -> Git {
        self.timeout = timeout;
        self
    }

    /// What git answers when an http(s) remote asks who it is.
    pub fn with_credential(mut self, credential: Credential) -> Git {
        self.credential = Some(credential);
        self
    }

    /// git with the same identity, time limit and credential, in another directory.
    pub fn at(&self, dir: impl Into<PathBuf>) -> Git {
        Git {
            dir: dir.into(),
            ..self.clone()
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
            .process_group(0)
            .kill_on_drop(true);
        if let Some(credential) = &self.credential {
            command
                .env("GIT_ASKPASS", &credential.askpass)
                .env("DAMASCUS_GIT_USERNAME", &credential.username)
                .env("DAMASCUS_GIT_PASSWORD", &credential.password);
        }
        command
    }

    /// Runs `git ARGS` within the time limit, feeding it `stdin`, and returns how it
    /// exited with its stdout and stderr.
    async fn execute(&self, args: &[&str], stdin: Option<&str>) -> GitResult<Finished> {
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
        let group = ProcessGroup(child.id());
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        let input = child.stdin.take();
        let ran = tokio::time::timeout(self.timeout, async {
            if let (Some(text), Some(mut pipe)) = (stdin, input) {
                // A git that stops reading says why through its exit status.
                let _ = pipe.write_all(text.as_bytes()).await;
                drop(pipe);
            }
            child.wait().await
        })
        .await;
        // Whatever git started ends with it: a helper left behind would hold the pipes.
        drop(group);
        let status = match ran {
            Ok(status) => status.map_err(GitError::Spawn)?,
            Err(_) => {
                let _ = child.wait().await;
                return Err(GitError::TimedOut {
                    args: redact_credentials(&args.join(" ")),
                    dir: self.dir.clone(),
                    after: self.timeout,
                });
            }
        };
        let (stdout, stderr) = tokio::join!(drain(stdout), drain(stderr));
        Ok(Finished {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs `git ARGS`, returning trimmed stdout.
    pub async fn run(&self, args: &[&str]) -> GitResult<String> {
        self.run_with_stdin(args, None).await
    }

    /// Runs `git ARGS` with `stdin` as standard input (for messages and notes).
    pub async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> GitResult<String> {
        let out = self.execute(args, stdin).await?;
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
        let out = self.execute(args, None).await?;
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

/// How a git command ended.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Kills git's process group when dropped: on a timeout, after git exited (a helper it
/// left behind), and when the caller's future is dropped mid-run (a cancelled phase),
/// where `kill_on_drop` alone would reach only git itself.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

/// The output a pipe reader collected; given up after a moment when a process that left
/// git's group still holds the pipe open.
async fn drain(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            abort.abort();
            Vec::new()
        }
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

    /// A remote that accepts connections and never says a word; the connections it
    /// accepted come out of the receiver, so a test can see when the other side closes.
    fn silent_remote() -> (u16, std::sync::mpsc::Receiver<std::net::TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if send.send(stream).is_err() {
                    break;
                }
            }
        });
        (port, receive)
    }

    /// Whether the peer of `stream` hung up within a few seconds.
    fn closed_by_peer(mut stream: std::net::TcpStream) -> bool {
        use std::io::Read;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }

    #[tokio::test]
    async fn a_silent_remote_times_out_and_its_helpers_die() {
        let (port, accepted) = silent_remote();
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path(), Identity::default()).with_timeout(Duration::from_secs(2));
        let url = format!("http://ci:tok-123@127.0.0.1:{port}/repo.git");
        let cases: [&[&str]; 2] = [
            &["clone", "--quiet", "--bare", &url, "cache.git"],
            &["ls-remote", &format!("git://127.0.0.1:{port}/repo")],
        ];
        for args in cases {
            let started = std::time::Instant::now();
            let error = git.run(args).await.unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(error, GitError::TimedOut { after, .. } if after == Duration::from_secs(2)),
                "{error:?}"
            );
            assert!(took < Duration::from_secs(6), "took {took:?}");
            let text = error.to_string();
            assert!(text.contains(&format!("git {}", args[0])), "{text}");
            assert!(text.contains("within 2s"), "{text}");
            assert!(
                text.contains("check that the remote is reachable"),
                "{text}"
            );
            assert!(!text.contains("tok-123"), "{text}");
            // The helper that held the connection (git-remote-http, or git itself) is
            // gone with git's process group.
            let connection = accepted.recv_timeout(Duration::from_secs(1)).unwrap();
            assert!(
                closed_by_peer(connection),
                "git {} left a helper behind",
                args[0]
            );
        }
    }

    /// Standard base64, for the expected `Authorization` header.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn credentials_reach_git_through_askpass_only() {
        let (port, seen) = damascus_testdb::http::basic_auth_remote();
        let dir = tempfile::tempdir().unwrap();
        let token = "tok-5ecret-value";
        let credential = Credential::new(&dir.path().join("bin"), "damascus", token).unwrap();
        let repo = dir.path().join("cache.git");
        std::fs::create_dir(&repo).unwrap();
        let git = Git::new(&repo, Identity::default()).with_credential(credential);
        git.run(&["init", "--quiet", "--bare"]).await.unwrap();
        let url = format!("http://127.0.0.1:{port}/acme/web.git");
        git.run(&["remote", "add", "origin", &url]).await.unwrap();
        let expected = format!("Basic {}", base64(format!("damascus:{token}").as_bytes()));
        let attempts: [&[&str]; 2] = [
            &["fetch", "--quiet", "origin"],
            &["push", "--quiet", "origin", "refs/heads/*:refs/heads/*"],
        ];
        for args in attempts {
            seen.lock().unwrap().clear();
            let error = git.run(args).await.unwrap_err().to_string();
            assert!(error.contains("Authentication failed"), "{error}");
            assert!(!error.contains(token), "{error}");
            assert_eq!(
                *seen.lock().unwrap(),
                [expected.as_str()],
                "git {}",
                args[0]
            );
        }
        let config = std::fs::read_to_string(repo.join("config")).unwrap();
        assert!(!config.contains(token), "{config}");
        let script = dir.path().join("bin/git-askpass.sh");
        assert!(!std::fs::read_to_string(&script).unwrap().contains(token));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Without a credential, git asks nobody and sends nothing.
        seen.lock().unwrap().clear();
        let bare = Git::new(&repo, Identity::default());
        assert!(bare.run(&["fetch", "--quiet", "origin"]).await.is_err());
        assert!(seen.lock().unwrap().is_empty());
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
