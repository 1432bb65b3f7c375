//! Finding the machine's PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! Debian keeps them out of PATH under `/usr/lib/postgresql/<major>/bin`, so the search
//! looks, in order: an explicit directory (`DAMASCUS_PG_BIN_DIR`), PATH,
//! `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` from the newest major down.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs a private cluster needs; all must sit in one directory so they belong
/// to the same PostgreSQL build.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A directory holding a complete set of server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinaries {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in PATH, `pg_config --bindir` or /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to use an existing PostgreSQL server"
    )]
    NotFound,
    #[error(
        "DAMASCUS_PG_BIN_DIR is {0:?}, but that directory lacks {1}; point it at the directory holding initdb, pg_ctl and postgres (e.g. /usr/lib/postgresql/15/bin) or unset it"
    )]
    ExplicitDirIncomplete(PathBuf, &'static str),
}

/// Where to look; `from_env` reads the real machine, tests build their own.
#[derive(Debug, Clone, Default)]
pub struct BinarySearch {
    pub explicit_dir: Option<PathBuf>,
    pub path_dirs: Vec<PathBuf>,
    pub pg_config_bindir: Option<PathBuf>,
    pub versioned_roots: Vec<PathBuf>,
}

impl BinarySearch {
    pub fn from_env() -> BinarySearch {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        BinarySearch {
            explicit_dir: std::env::var_os("DAMASCUS_PG_BIN_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            path_dirs,
            pg_config_bindir: pg_config_bindir(),
            versioned_roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }

    pub fn find(&self) -> Result<ServerBinaries, BinariesError> {
        if let Some(dir) = &self.explicit_dir {
            return match REQUIRED.iter().find(|b| !is_executable(&dir.join(b))) {
                Some(missing) => Err(BinariesError::ExplicitDirIncomplete(dir.clone(), missing)),
                None => Ok(ServerBinaries { dir: dir.clone() }),
            };
        }
        let versioned = self
            .versioned_roots
            .iter()
            .flat_map(|root| versioned_bin_dirs(root));
        self.path_dirs
            .iter()
            .cloned()
            .chain(self.pg_config_bindir.clone())
            .chain(versioned)
            .find(|dir| REQUIRED.iter().all(|b| is_executable(&dir.join(b))))
            .map(|dir| ServerBinaries {
                dir: installation_dir(dir),
            })
            .ok_or(BinariesError::NotFound)
    }
}

impl ServerBinaries {
    pub fn find() -> Result<ServerBinaries, BinariesError> {
        BinarySearch::from_env().find()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A program from the same installation, e.g. `pg_dump` or `psql`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A PATH directory may hold only links to a few programs (`/usr/local/bin/pg_ctl ->
/// /usr/lib/postgresql/15/bin/pg_ctl`); the directory the links point into holds the
/// whole installation, `pg_dump` included, so prefer it when it is complete.
fn installation_dir(dir: PathBuf) -> PathBuf {
    let real = std::fs::canonicalize(dir.join("postgres"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    match real {
        Some(real) if REQUIRED.iter().all(|b| is_executable(&real.join(b))) => real,
        _ => dir,
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/<major>/bin` for every numeric major, newest first.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut majors: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    majors.sort_by_key(|m| std::cmp::Reverse(m.0));
    majors.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin_dir(root: &Path, programs: &[&str]) -> PathBuf {
        std::fs::create_dir_all(root).unwrap();
        for p in programs {
            let path = root.join(p);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        root.to_path_buf()
    }

    #[test]
    fn nothing_anywhere_names_the_package_and_database_url() {
        let empty = tempfile::tempdir().unwrap();
        let search = BinarySearch {
            path_dirs: vec![empty.path().to_path_buf()],
            versioned_roots: vec![empty.path().join("none")],
            ..BinarySearch::default()
        };
        let message = search.find().unwrap_err().to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn newest_versioned_directory_wins_and_incomplete_ones_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        fake_bin_dir(&root.path().join("13/bin"), &REQUIRED);
        fake_bin_dir(&root.path().join("16/bin"), &["initdb", "pg_ctl"]);
        let fifteen = fake_bin_dir(&root.path().join("15/bin"), &REQUIRED);
        std::fs::create_dir_all(root.path().join("not-a-version/bin")).unwrap();
        let search = BinarySearch {
            versioned_roots: vec![root.path().to_path_buf()],
            ..BinarySearch::default()
        };
        assert_eq!(search.find().unwrap().dir(), fifteen);
    }

    #[test]
    fn path_comes_before_versioned_directories() {
        let root = tempfile::tempdir().unwrap();
        let on_path = fake_bin_dir(&root.path().join("path"), &REQUIRED);
        fake_bin_dir(&root.path().join("lib/15/bin"), &REQUIRED);
        let search = BinarySearch {
            path_dirs: vec![on_path.clone()],
            versioned_roots: vec![root.path().join("lib")],
            ..BinarySearch::default()
        };
        assert_eq!(search.find().unwrap().dir(), on_path);
    }

    #[test]
    fn explicit_directory_must_be_complete() {
        let root = tempfile::tempdir().unwrap();
        let partial = fake_bin_dir(&root.path().join("p"), &["initdb", "postgres"]);
        let search = BinarySearch {
            explicit_dir: Some(partial),
            ..BinarySearch::default()
        };
        let message = search.find().unwrap_err().to_string();
        assert!(message.contains("lacks pg_ctl"), "{message}");
        assert!(message.contains("DAMASCUS_PG_BIN_DIR"), "{message}");
    }
}
