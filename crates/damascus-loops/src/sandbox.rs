//! Where the agent and the test command run, and with what: an environment built from
//! an allow-list (PATH, LANG, a HOME of their own, the variables the deployment gives
//! the agent), never the worker's; and, for a project with `--sandbox bwrap`, a
//! bubblewrap namespace where only the worktree and that HOME are writable, the data
//! directory (the cluster, its socket, the cache clones, the logs, other worktrees) is
//! hidden, and the worker's processes cannot be seen. With `--agent-user NAME` they run
//! as that user: the worktree and HOME are handed to it for the run and taken back
//! after, and the data directory's other parts (the cluster, the cache clones, the
//! logs, idle worktrees) are closed to it.

use std::path::{Path, PathBuf};

use damascus_core::{Sandbox, Verdict};

use crate::{Inner, PhaseInput};

/// The unprivileged user the agent and the tests run as (`--agent-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Capabilities a worker needs to run processes as another user, hand directories to
/// it and back, and kill those processes at a time limit or on cancel: CAP_CHOWN,
/// CAP_DAC_OVERRIDE, CAP_KILL, CAP_SETGID, CAP_SETUID (root has them).
const AGENT_USER_CAPABILITIES: [(u32, &str); 5] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

impl AgentUser {
    /// Looks `name` up and checks that this process may run processes as it.
    pub fn lookup(name: &str) -> Result<AgentUser, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up the agent user {name:?}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "there is no user {name:?} on this machine for --agent-user; create it (useradd --system --create-home {name}) or leave --agent-user out"
                )
            })?;
        if user.uid.is_root() {
            return Err(format!(
                "--agent-user {name:?} is root, which the agent must not be; name an unprivileged user"
            ));
        }
        if user.uid == nix::unistd::geteuid() {
            return Err(format!(
                "--agent-user {name:?} is the user this worker runs as; name another, unprivileged user so the agent cannot read the worker's environment"
            ));
        }
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(format!(
                "--agent-user needs a worker that may switch users and hand directories over ({}); run the worker as root, or give its binary those capabilities (setcap cap_chown,cap_dac_override,cap_kill,cap_setgid,cap_setuid+ep damascus)",
                missing.join(", ")
            ));
        }
        Ok(AgentUser {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// The capabilities of `AGENT_USER_CAPABILITIES` this process lacks.
fn missing_capabilities() -> Vec<&'static str> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    AGENT_USER_CAPABILITIES
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// How one process of a phase is confined. `handed.release()` takes the worktree and
/// HOME back from the agent user after the run.
pub(crate) struct Confinement {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The user and group the process runs as, when not the worker's.
    pub user: Option<(u32, u32)>,
    pub handed: HandedOver,
}

/// The directories handed to the agent user for a run.
pub(crate) struct HandedOver(Vec<PathBuf>);

impl HandedOver {
    /// Gives the directories handed to the agent user back to the worker, so the worker's
    /// git sees its own worktree and an idle worktree is closed to the agent user.
    pub async fn release(self) {
        let worker = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        for dir in self.0 {
            let shown = dir.display().to_string();
            let owned = tokio::task::spawn_blocking(move || chown_tree(&dir, worker)).await;
            if let Ok(Err(e)) | Err(e) = owned.map_err(std::io::Error::other) {
                tracing::warn!(dir = shown, error = %e, "cannot take a directory back from the agent user");
            }
        }
    }
}

/// Changes the owner of `dir` and everything under it (links themselves, not what they
/// point to).
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// Opens the way to `worktree` and `home` for the agent user and closes the rest of the
/// data directory to it: directories on the way may be passed through but not listed;
/// the cache clones and the logs are the worker's alone.
fn open_the_way(data_dir: &Path, worktree: &Path, home: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| match std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode),
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    for closed in ["repos", "logs"] {
        mode(&data_dir.join(closed), 0o700)?;
    }
    for dir in [worktree, home] {
        let mut on_the_way = dir.parent();
        while let Some(parent) = on_the_way.filter(|p| p.starts_with(data_dir)) {
            mode(parent, 0o711)?;
            on_the_way = parent.parent();
        }
    }
    Ok(())
}

/// The HOME a project's item gets: `homes/<project>-<item>` under the data directory.
pub(crate) fn home_dir(inner: &Inner, input: &PhaseInput) -> PathBuf {
    inner.config.data_dir.join("homes").join(input.key())
}

/// The environment every phase process gets: PATH, LANG, its HOME, and `extra`.
pub(crate) fn allowed_env(home: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".to_owned(), home.to_string_lossy().into_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// `argv` confined as the project asks, to run in `worktree` with `extra` variables
/// besides the allowed ones.
pub(crate) async fn confine(
    inner: &Inner,
    input: &PhaseInput,
    worktree: &Path,
    argv: Vec<String>,
    extra: &[(String, String)],
) -> Result<Confinement, Verdict> {
    let home = home_dir(inner, input);
    tokio::fs::create_dir_all(&home)
        .await
        .map_err(|e| Verdict::TransientError {
            reason: format!("cannot create the agent's HOME {}: {e}", home.display()),
        })?;
    let env = allowed_env(&home, extra);
    let argv = match input.project.sandbox {
        Sandbox::None => argv,
        Sandbox::Bwrap => {
            let Some(bwrap) = find_on_path("bwrap") else {
                return Err(Verdict::NeedsHuman {
                    question: format!(
                        "project {} runs its agent and tests under bubblewrap (--sandbox bwrap), but bwrap is not installed on this worker; install it (Debian/Ubuntu: apt-get install bubblewrap) and answer to try again",
                        input.project.name
                    ),
                    context: String::new(),
                });
            };
            // The agent user may not read the cache clones, so bubblewrap, which runs as
            // that user, cannot bind them: git in the worktree then reads nothing.
            let cache = inner.config.agent_user.is_none().then(|| {
                inner
                    .config
                    .data_dir
                    .join("repos")
                    .join(format!("{}.git", input.project.name))
            });
            bwrap_argv(
                &bwrap,
                &inner.config.data_dir,
                cache.as_deref(),
                worktree,
                &home,
                argv,
            )
        }
    };
    let mut handed_over = Vec::new();
    if let Some(user) = &inner.config.agent_user {
        handed_over = vec![worktree.to_path_buf(), home.clone()];
        let (data_dir, dirs) = (inner.config.data_dir.clone(), handed_over.clone());
        let owner = (user.uid, user.gid);
        let handed = tokio::task::spawn_blocking(move || {
            open_the_way(&data_dir, &dirs[0], &dirs[1])?;
            dirs.iter().try_for_each(|dir| chown_tree(dir, owner))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = handed {
            HandedOver(handed_over).release().await;
            return Err(Verdict::TransientError {
                reason: format!(
                    "cannot hand the worktree to the agent user {}: {e}",
                    user.name
                ),
            });
        }
    }
    Ok(Confinement {
        argv,
        env,
        user: inner.config.agent_user.as_ref().map(|u| (u.uid, u.gid)),
        handed: HandedOver(handed_over),
    })
}

/// The socket directories a PostgreSQL server on this machine may listen in.
const SOCKET_DIRS: [&str; 2] = ["/run/postgresql", "/var/run/postgresql"];

/// bubblewrap's argv: the whole file system read-only, a fresh /tmp, /dev and /proc
/// (of a new PID namespace, so the worker cannot be seen), the data directory and the
/// machine's PostgreSQL socket directories hidden under empty file systems, then the
/// worktree and HOME writable, the project's cache clone (git in the worktree reads its
/// objects there) and the agent's own program readable. The network stays: the agent calls its model.
fn bwrap_argv(
    bwrap: &Path,
    data_dir: &Path,
    cache: Option<&Path>,
    worktree: &Path,
    home: &Path,
    argv: Vec<String>,
) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut wrapped: Vec<String> = vec![
        path(bwrap),
        "--ro-bind".into(),
        "/".into(),
        "/".into(),
        "--dev".into(),
        "/dev".into(),
        "--proc".into(),
        "/proc".into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ];
    // One of them is often a link to the other: each real directory once.
    let mut sockets: Vec<PathBuf> = SOCKET_DIRS
        .iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .filter(|dir| dir.is_dir())
        .collect();
    sockets.dedup();
    for dir in sockets {
        wrapped.extend(["--tmpfs".into(), path(&dir)]);
    }
    wrapped.extend(["--tmpfs".into(), path(data_dir)]);
    // The agent's own program stays reachable when it lives under a hidden directory.
    if let Some(program) = argv.first().map(Path::new) {
        if program.is_absolute() && program.is_file() {
            wrapped.extend(["--ro-bind".into(), path(program), path(program)]);
        }
    }
    if let Some(cache) = cache.filter(|cache| cache.is_dir()) {
        wrapped.extend(["--ro-bind".into(), path(cache), path(cache)]);
    }
    wrapped.extend([
        "--bind".into(),
        path(worktree),
        path(worktree),
        "--bind".into(),
        path(home),
        path(home),
        "--unshare-all".into(),
        "--share-net".into(),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--chdir".into(),
        path(worktree),
        "--".into(),
    ]);
    wrapped.extend(argv);
    wrapped
}

/// `program`'s path on the worker's PATH.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_environment_holds_nothing_of_the_workers() {
        let env = allowed_env(
            Path::new("/data/homes/web-1"),
            &[("ANTHROPIC_BASE_URL".into(), "http://model".into())],
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "LANG", "ANTHROPIC_BASE_URL"]);
        assert!(env.contains(&("HOME".into(), "/data/homes/web-1".into())));
    }

    #[test]
    fn bubblewrap_hides_the_data_dir_and_binds_the_worktree_after_it() {
        let argv = bwrap_argv(
            Path::new("/usr/bin/bwrap"),
            Path::new("/data"),
            Some(Path::new("/nonexistent/cache.git")),
            Path::new("/data/worktrees/web/web-1"),
            Path::new("/data/homes/web-1"),
            vec!["claude".into(), "-p".into()],
        );
        let at = |flag: &str, value: &str| {
            argv.windows(2)
                .position(|w| w[0] == flag && w[1] == value)
                .unwrap_or_else(|| panic!("{flag} {value} missing from {argv:?}"))
        };
        assert!(at("--tmpfs", "/data") < at("--bind", "/data/worktrees/web/web-1"));
        assert!(at("--tmpfs", "/data") < at("--bind", "/data/homes/web-1"));
        assert!(argv.contains(&"--unshare-all".into()));
        assert_eq!(argv[argv.len() - 3..], ["--", "claude", "-p"]);
    }
}
