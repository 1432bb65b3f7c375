//! Where the agent and the test command run, and with what: an environment built from
//! an allow-list (PATH, LANG, a HOME of their own, the variables the deployment gives
//! the agent), never the worker's; and, for a project with `--sandbox bwrap`, a
//! bubblewrap namespace where only the worktree and that HOME are writable, the data
//! directory (the cluster, its socket, the cache clones, the logs, other worktrees) is
//! hidden, and the worker's processes cannot be seen.

use std::path::{Path, PathBuf};

use damascus_core::{Sandbox, Verdict};

use crate::{Inner, PhaseInput};

/// How one process of a phase is confined.
pub(crate) struct Confinement {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
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
            let cache = inner
                .config
                .data_dir
                .join("repos")
                .join(format!("{}.git", input.project.name));
            bwrap_argv(
                &bwrap,
                &inner.config.data_dir,
                &cache,
                worktree,
                &home,
                argv,
            )
        }
    };
    Ok(Confinement { argv, env })
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
    cache: &Path,
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
    if cache.is_dir() {
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
            Path::new("/nonexistent/cache.git"),
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
