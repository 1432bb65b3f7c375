//! Names that end up in branch names, URLs and file paths, so they are restricted to
//! a safe alphabet at the door.

use std::fmt;

/// A project's name: 1–63 characters of lowercase letters, digits, `-` and `_`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("project name is empty; give a name such as \"web\" or \"billing-api\"")]
    Empty,
    #[error(
        "project name {0:?} is not allowed; use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit (e.g. \"billing-api\")"
    )]
    Invalid(String),
}

impl ProjectName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !first_ok || !rest_ok || name.len() > 63 {
            return Err(NameError::Invalid(raw.to_owned()));
        }
        Ok(ProjectName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a lock (a named mutex items share, e.g. `db-schema`): 1-100 characters
/// of letters, digits, `-`, `_`, `.`, `:` and `/`, so it reads the same in a shell, a
/// URL and a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "lock name {0:?} is not allowed; use 1-100 letters, digits, '-', '_', '.', ':' or '/' (e.g. \"db-schema\" or \"merge:web\")"
)]
pub struct LockNameError(pub String);

impl LockName {
    pub fn parse(raw: &str) -> Result<Self, LockNameError> {
        let name = raw.trim();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
        if name.is_empty() || name.len() > 100 || !name.chars().all(allowed) {
            return Err(LockNameError(raw.to_owned()));
        }
        Ok(LockName(name.to_owned()))
    }

    /// Parses each name; the result is sorted with duplicates removed.
    pub fn parse_all<S: AsRef<str>>(raw: &[S]) -> Result<Vec<LockName>, LockNameError> {
        let mut names = raw
            .iter()
            .map(|r| LockName::parse(r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, ok: bool) {
        assert_eq!(ProjectName::parse(raw).is_ok(), ok, "{raw:?}");
    }

    #[test]
    fn project_names() {
        check("web", true);
        check("billing-api", true);
        check("a_1", true);
        check("9lives", true);
        check("", false);
        check("   ", false);
        check("Web", false);
        check("-web", false);
        check("web/api", false);
        check("we b", false);
        check(&"a".repeat(63), true);
        check(&"a".repeat(64), false);
    }

    #[test]
    fn messages_say_how_to_fix() {
        assert!(ProjectName::parse("")
            .unwrap_err()
            .to_string()
            .contains("give a name"));
        assert!(ProjectName::parse("Web")
            .unwrap_err()
            .to_string()
            .contains("lowercase letters"));
    }

    #[test]
    fn lock_names() {
        for ok in [
            "db-schema",
            "merge:web",
            "a",
            "repo/path.v2",
            &"x".repeat(100),
        ] {
            assert!(LockName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "  ",
            "two words",
            "semi;colon",
            "$(rm)",
            "naïve",
            &"x".repeat(101),
        ] {
            let err = LockName::parse(bad).unwrap_err().to_string();
            assert!(err.contains("e.g."), "{err}");
        }
        let all = LockName::parse_all(&["b", " a ", "b"]).unwrap();
        assert_eq!(
            all.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
