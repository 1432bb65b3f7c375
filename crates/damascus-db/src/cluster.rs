//! The embedded default: a private PostgreSQL cluster that Damascus starts itself from
//! the machine's server binaries when no `DATABASE_URL` is given.
//!
//! Layout, under a *cluster root* (normally `<data-dir>/postgres`):
//! `data/` is PGDATA, `run/` holds the Unix socket, `server.log` is the server's log and
//! `cluster.lock` serialises starting and stopping between processes. The server listens
//! on the Unix socket only (`listen_addresses = ''`) with trust authentication; the socket
//! directory is mode 0700, so only its owner (and root) can connect.
//!
//! PostgreSQL refuses to run as root. When Damascus runs as root the server runs as the
//! `postgres` user (or `nobody` where there is none), which cannot enter `/root`: if the
//! server user cannot reach the data directory, the cluster root moves to
//! `/var/lib/damascus/clusters/<hash of the data dir>` and [`ClusterLayout::placement_note`]
//! says so.
//!
//! The cluster outlives the command that started it, so that `psql` and the next
//! `damascus` command find it running; `damascus db stop` stops it. A crash leaves a
//! stale `postmaster.pid`; a pid that names no live postgres process is removed before
//! starting.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::unistd::{Gid, Uid, User};
use sha2::{Digest, Sha256};

use crate::pg_bin::{BinariesError, ServerBinaries};

/// The port number only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
pub const SOCKET_PORT: u16 = 5432;
/// The superuser `initdb` creates; connections use it over the private socket.
pub const SUPERUSER: &str = "damascus";
/// Where the cluster lives when Damascus runs as root and the server user cannot reach
/// the data directory.
const ROOT_FALLBACK_DIR: &str = "/var/lib/damascus/clusters";
/// Unix socket paths are limited to 108 bytes on Linux, including the file name.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// How much durability the cluster trades for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The production default: PostgreSQL's own settings.
    Durable,
    /// For throw-away test clusters: no fsync, no full-page writes.
    Ephemeral,
}

/// The operating-system account the server runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    uid: Uid,
    gid: Gid,
    /// True when Damascus itself runs as root and the server must drop to this user.
    switch_to: bool,
}

/// Where each part of the cluster lives, resolved for the current user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    pub data_dir: PathBuf,
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub server_user: ServerUser,
    /// Set when the cluster does not live under the data directory, saying why.
    pub placement_note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error(
        "cannot determine a data directory (no HOME?); pass --data-dir or set DAMASCUS_DATA_DIR"
    )]
    NoDataDir,
    #[error("damascus runs as root, and PostgreSQL refuses root; there is no `postgres` user to run it as; create one (useradd --system --user-group --no-create-home postgres) or set DATABASE_URL")]
    NoServerUser,
    #[error("{action} {path}: {source}; check that the directory is writable or choose another with --data-dir")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not a directory of the PostgreSQL server user (another user made it, or it is a link); remove it or choose another --data-dir"
    )]
    ForeignSocketDir(PathBuf),
    #[error("{program} failed ({status}): {output}")]
    Command {
        program: &'static str,
        status: String,
        output: String,
    },
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> ClusterError + 'p {
    move |source| ClusterError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The data directory used when neither `--data-dir` nor `DAMASCUS_DATA_DIR` is given:
/// the user's data directory (`$XDG_DATA_HOME` or `~/.local/share`) plus `damascus`.
pub fn default_data_dir() -> Result<PathBuf, ClusterError> {
    dirs::data_dir()
        .map(|d| d.join("damascus"))
        .ok_or(ClusterError::NoDataDir)
}

impl ServerUser {
    fn resolve() -> Result<ServerUser, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(ServerUser {
                name: User::from_uid(Uid::effective())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| Uid::effective().to_string()),
                uid: Uid::effective(),
                gid: Gid::effective(),
                switch_to: false,
            });
        }
        // Not `nobody`: with trust authentication, every other process running as that
        // shared account could connect as superuser.
        User::from_name("postgres")
            .ok()
            .flatten()
            .map(|u| ServerUser {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
                switch_to: true,
            })
            .ok_or(ClusterError::NoServerUser)
    }

    /// Whether this user may search (`x`) every existing directory from `/` to `path`.
    fn can_reach(&self, path: &Path) -> bool {
        path.ancestors().all(|dir| match fs::metadata(dir) {
            Ok(meta) => {
                let mode = meta.permissions().mode();
                if meta.uid() == self.uid.as_raw() {
                    mode & 0o100 != 0
                } else if meta.gid() == self.gid.as_raw() {
                    mode & 0o010 != 0
                } else {
                    mode & 0o001 != 0
                }
            }
            // Directories that do not exist yet are created by us, world-searchable.
            Err(_) => true,
        })
    }
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl ClusterLayout {
    pub fn resolve(data_dir: &Path) -> Result<ClusterLayout, ClusterError> {
        let data_dir = absolute(data_dir);
        let server_user = ServerUser::resolve()?;
        let (root, placement_note) = if server_user.can_reach(&data_dir) {
            (data_dir.join("postgres"), None)
        } else {
            let root = Path::new(ROOT_FALLBACK_DIR).join(short_hash(&data_dir.to_string_lossy()));
            let note = format!(
                "the cluster lives in {} because damascus runs as root and PostgreSQL runs as user {}, which cannot enter {}",
                root.display(),
                server_user.name,
                data_dir.display()
            );
            (root, Some(note))
        };
        let socket_dir = {
            let beside = root.join("run");
            if beside.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
                beside
            } else {
                std::env::temp_dir()
                    .join(format!("damascus-{}", short_hash(&root.to_string_lossy())))
            }
        };
        Ok(ClusterLayout {
            pgdata: root.join("data"),
            log_file: root.join("server.log"),
            socket_dir,
            root,
            data_dir,
            server_user,
            placement_note,
        })
    }

    /// A libpq/sqlx connection URL for `database` over the private socket.
    pub fn url(&self, database: &str) -> String {
        let host: String = self
            .socket_dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://{SUPERUSER}@{host}:{SOCKET_PORT}/{database}")
    }

    /// A `psql` command line a person can paste.
    pub fn psql_hint(&self, database: &str) -> String {
        format!(
            "psql -h {} -p {SOCKET_PORT} -U {SUPERUSER} {database}",
            self.socket_dir.display()
        )
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What `ensure_running` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    AlreadyRunning,
    Started { initialized: bool },
}

/// What `stop` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    Stopped,
    NotRunning,
}

/// A private cluster: its layout and the binaries that run it.
#[derive(Debug, Clone)]
pub struct EmbeddedCluster {
    pub layout: ClusterLayout,
    binaries: ServerBinaries,
    durability: Durability,
}

impl EmbeddedCluster {
    pub fn new(data_dir: &Path, durability: Durability) -> Result<EmbeddedCluster, ClusterError> {
        Ok(EmbeddedCluster {
            layout: ClusterLayout::resolve(data_dir)?,
            binaries: ServerBinaries::find()?,
            durability,
        })
    }

    pub fn binaries(&self) -> &ServerBinaries {
        &self.binaries
    }

    /// Initialises the cluster if it does not exist and starts it if it is not running.
    /// Safe to call from several processes at once: the work happens under a file lock.
    pub fn ensure_running(&self) -> Result<StartOutcome, ClusterError> {
        self.prepare_dirs()?;
        let _lock = self.lock()?;
        let initialized = if self.layout.pgdata.join("PG_VERSION").exists() {
            false
        } else {
            self.initdb()?;
            true
        };
        if self.is_running()? {
            let socket = self
                .layout
                .socket_dir
                .join(format!(".s.PGSQL.{SOCKET_PORT}"));
            if socket.exists() {
                return Ok(StartOutcome::AlreadyRunning);
            }
            // Running but unreachable: its socket file was deleted (a /tmp cleaner, a
            // person). Only a restart makes the server create it again.
            tracing::warn!(socket = %socket.display(), "the server's socket is gone; restarting it");
            self.pg_ctl_stop()?;
        }
        self.write_settings()?;
        self.start()?;
        Ok(StartOutcome::Started { initialized })
    }

    /// Stops the server (fast shutdown: running transactions roll back, nothing
    /// committed is lost).
    pub fn stop(&self) -> Result<StopOutcome, ClusterError> {
        if !self.layout.pgdata.join("PG_VERSION").exists() {
            return Ok(StopOutcome::NotRunning);
        }
        let _lock = self.lock()?;
        if !self.is_running()? {
            return Ok(StopOutcome::NotRunning);
        }
        self.pg_ctl_stop()?;
        Ok(StopOutcome::Stopped)
    }

    /// `pg_ctl stop -m fast`, waiting for the server to be gone.
    fn pg_ctl_stop(&self) -> Result<(), ClusterError> {
        let pgdata = path_arg(&self.layout.pgdata);
        let out = self.run_as_server(
            "pg_ctl",
            &["stop", "-D", &pgdata, "-m", "fast", "-w", "-t", "60", "-s"],
        )?;
        check("pg_ctl stop", &out)
    }

    pub fn is_running(&self) -> Result<bool, ClusterError> {
        if !self.layout.pgdata.join("PG_VERSION").exists() {
            return Ok(false);
        }
        // Not `pg_ctl status`: it trusts any live pid, and a crashed postmaster can linger
        // as a zombie where nothing reaps orphans (PID 1 in some containers).
        Ok(self
            .server_pid()
            .is_some_and(|pid| is_postgres_process(pid, &self.layout.pgdata)))
    }

    /// The server's pid, when it is running.
    pub fn server_pid(&self) -> Option<i32> {
        read_pid_file(&self.layout.pgdata.join("postmaster.pid"))
    }

    fn prepare_dirs(&self) -> Result<(), ClusterError> {
        let layout = &self.layout;
        if let Some(parent) = layout.root.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        for dir in [&layout.root, &layout.socket_dir] {
            let created = match fs::create_dir(dir) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io_err("cannot create", dir)(e)),
            };
            // symlink_metadata: a symbolic link planted at this path is refused, never
            // followed.
            let meta = fs::symlink_metadata(dir).map_err(io_err("cannot inspect", dir))?;
            if !meta.is_dir() {
                return Err(ClusterError::ForeignSocketDir(dir.clone()));
            }
            if meta.uid() != layout.server_user.uid.as_raw() {
                // Only a directory we just made is handed to the server user; one that
                // someone else made (e.g. in /tmp) is refused.
                if !(created && layout.server_user.switch_to) {
                    return Err(ClusterError::ForeignSocketDir(dir.clone()));
                }
                nix::unistd::chown(
                    dir,
                    Some(layout.server_user.uid),
                    Some(layout.server_user.gid),
                )
                .map_err(|e| io_err("cannot chown", dir)(e.into()))?;
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("cannot set permissions on", dir))?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<File, ClusterError> {
        let path = self.layout.root.join("cluster.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        file.lock().map_err(io_err("cannot lock", &path))?;
        Ok(file)
    }

    /// `initdb` into a scratch directory, renamed into place only when complete, so an
    /// interrupted init never leaves a half-made PGDATA behind.
    fn initdb(&self) -> Result<(), ClusterError> {
        let scratch = self.layout.root.join("data.initdb");
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_err("cannot remove", &scratch))?;
        }
        let out = self.run_as_server(
            "initdb",
            &[
                "-D",
                &path_arg(&scratch),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
        )?;
        check("initdb", &out)?;
        let conf = scratch.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(io_err("cannot read", &conf))?;
        text.push_str("\n# Written by damascus: settings it manages, rewritten at every start.\ninclude_if_exists = 'damascus.conf'\n");
        fs::write(&conf, text).map_err(io_err("cannot write", &conf))?;
        fs::rename(&scratch, &self.layout.pgdata).map_err(io_err("cannot rename", &scratch))?;
        Ok(())
    }

    fn write_settings(&self) -> Result<(), ClusterError> {
        let socket_dir = self.layout.socket_dir.to_string_lossy().replace('\'', "''");
        let mut settings = format!(
            "# Managed by damascus; edits here are overwritten at the next start.\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{socket_dir}'\n\
             unix_socket_permissions = 0700\n\
             port = {SOCKET_PORT}\n\
             max_connections = 200\n"
        );
        if self.durability == Durability::Ephemeral {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.layout.pgdata.join("damascus.conf");
        fs::write(&path, settings).map_err(io_err("cannot write", &path))?;
        if self.layout.server_user.switch_to {
            let user = &self.layout.server_user;
            nix::unistd::chown(&path, Some(user.uid), Some(user.gid))
                .map_err(|e| io_err("cannot chown", &path)(e.into()))?;
        }
        Ok(())
    }

    fn start(&self) -> Result<(), ClusterError> {
        self.remove_stale_pid_file()?;
        let pgdata = path_arg(&self.layout.pgdata);
        let log = path_arg(&self.layout.log_file);
        let log_len_before = fs::metadata(&self.layout.log_file)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut last_failure = None;
        // After a crash the old server's children may need a moment to notice and exit;
        // until then PostgreSQL refuses to reuse their shared memory.
        for _ in 0..3 {
            let out = self.run_as_server(
                "pg_ctl",
                &["start", "-D", &pgdata, "-l", &log, "-w", "-t", "60", "-s"],
            )?;
            match check("pg_ctl start", &out) {
                Ok(()) => return Ok(()),
                Err(err) => last_failure = Some(err),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let log_tail = read_tail(&self.layout.log_file, log_len_before, 2000);
        Err(match last_failure.expect("the loop ran at least once") {
            ClusterError::Command {
                program,
                status,
                output,
            } => ClusterError::Command {
                program,
                status,
                output: format!(
                    "{output}; server log {}: {log_tail}",
                    self.layout.log_file.display()
                ),
            },
            other => other,
        })
    }

    /// Removes `postmaster.pid` when the pid it names is gone or is not a postgres
    /// process (a reused pid), so a crashed server does not block the next start.
    fn remove_stale_pid_file(&self) -> Result<(), ClusterError> {
        let path = self.layout.pgdata.join("postmaster.pid");
        let Some(pid) = read_pid_file(&path) else {
            return Ok(());
        };
        if is_postgres_process(pid, &self.layout.pgdata) {
            return Ok(());
        }
        tracing::warn!(pid, path = %path.display(), "removing stale postmaster.pid left by a crashed server");
        fs::remove_file(&path).map_err(io_err("cannot remove", &path))
    }

    fn run_as_server(&self, program: &'static str, args: &[&str]) -> Result<Output, ClusterError> {
        let binary = self.binaries.program(program);
        let mut command = Command::new(&binary);
        command
            .args(args)
            .current_dir(&self.layout.root)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let user = &self.layout.server_user;
        if user.switch_to {
            // std drops root's supplementary groups when it sets the uid.
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command.output().map_err(io_err("cannot run", &binary))
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn check(program: &'static str, out: &Output) -> Result<(), ClusterError> {
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(ClusterError::Command {
        program,
        status: out.status.to_string(),
        output,
    })
}

fn read_pid_file(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// True when `pid` is a live (not zombie) process running a postgres binary. A zombie
/// has an empty command line.
fn is_postgres_process(pid: i32, pgdata: &Path) -> bool {
    // The postmaster of this cluster runs `postgres -D <pgdata>`: a reused pid that
    // now belongs to another program, or to another cluster, does not match.
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("postgres") && cmdline.contains(&*pgdata.to_string_lossy())
        }
        Err(_) => false,
    }
}

fn read_tail(path: &Path, from: u64, max: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no server log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(max as u64));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.read_to_string(&mut text);
    }
    text.trim().replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_percent_encodes_the_socket_directory() {
        let layout = ClusterLayout {
            data_dir: "/d".into(),
            root: "/d/postgres".into(),
            pgdata: "/d/postgres/data".into(),
            socket_dir: "/tmp/a b/run".into(),
            log_file: "/d/postgres/server.log".into(),
            server_user: ServerUser::resolve().unwrap(),
            placement_note: None,
        };
        assert_eq!(
            layout.url("damascus"),
            "postgresql://damascus@%2Ftmp%2Fa%20b%2Frun:5432/damascus"
        );
    }

    #[test]
    fn long_data_dirs_get_a_short_socket_dir() {
        let long = std::env::temp_dir().join("x".repeat(120));
        let layout = ClusterLayout::resolve(&long).unwrap();
        assert!(layout.socket_dir.as_os_str().len() <= MAX_SOCKET_DIR_LEN);
        assert!(layout.pgdata.starts_with(&long) || layout.placement_note.is_some());
    }

    #[test]
    fn root_data_dir_out_of_reach_moves_the_cluster() {
        if !Uid::effective().is_root() {
            return; // Only root has a server user that differs from itself.
        }
        let private = tempfile::tempdir().unwrap();
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let layout = ClusterLayout::resolve(&private.path().join("damascus")).unwrap();
        assert!(layout.root.starts_with(ROOT_FALLBACK_DIR), "{layout:?}");
        let note = layout.placement_note.unwrap();
        assert!(note.contains("cannot enter"), "{note}");
    }
}
