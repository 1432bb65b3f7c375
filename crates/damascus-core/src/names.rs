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
}
