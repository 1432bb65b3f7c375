//! The closed vocabularies of Damascus, mirrored one-to-one by PostgreSQL enum types
//! in `migrations/`: a value the database accepts is a value this module can name.

use std::fmt;
use std::str::FromStr;

/// Declares a string-backed enum whose spellings match a PostgreSQL enum type.
macro_rules! sql_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in the order the database enum declares them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling used in the database, the CLI and JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant {
                        what: $what,
                        given: s.to_owned(),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A word that is not one of a closed vocabulary's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; use one of: {}", allowed.join(", "))]
pub struct UnknownVariant {
    pub what: &'static str,
    pub given: String,
    pub allowed: &'static [&'static str],
}

sql_enum! {
    /// Where a work item stands. `merged` and `cancelled` are final; `blocked` waits
    /// for a person and resumes in the phase it left.
    Phase, "phase" {
        Intake => "intake",
        Spec => "spec",
        Build => "build",
        Review => "review",
        Merged => "merged",
        Blocked => "blocked",
        Cancelled => "cancelled",
    }
}

impl Phase {
    /// True for phases an item never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Merged | Phase::Cancelled)
    }

    /// True for phases in which a loop does work (spec-refiner, code-builder, reviewer).
    pub fn is_working(self) -> bool {
        matches!(self, Phase::Spec | Phase::Build | Phase::Review)
    }
}

sql_enum! {
    /// How a phase ended.
    VerdictKind, "verdict" {
        Pass => "pass",
        Fail => "fail",
        NeedsHuman => "needs_human",
        TransientError => "transient_error",
    }
}

sql_enum! {
    /// Where a project's pull requests live.
    ForgeKind, "forge kind" {
        Local => "local",
        Gitea => "gitea",
        Github => "github",
    }
}

sql_enum! {
    /// How a forge merges a project's pull requests.
    MergeMethod, "merge method" {
        Merge => "merge",
        Squash => "squash",
        Rebase => "rebase",
    }
}

sql_enum! {
    /// How the merge queue brings a branch that fell behind up to date with its base.
    BranchUpdate, "branch update" {
        Merge => "merge",
        Rebase => "rebase",
    }
}

sql_enum! {
    /// Where a project's agent and tests run: as the worker's child processes with an
    /// allow-listed environment and a HOME of their own (none), or also in a bubblewrap
    /// namespace where only the worktree and that HOME are writable, the data directory
    /// is hidden and the worker's processes cannot be seen (bwrap).
    Sandbox, "sandbox" {
        None => "none",
        Bwrap => "bwrap",
    }
}

sql_enum! {
    /// Where an item stands in its repository's merge queue: waiting for its turn,
    /// its branch being brought up to date, its tests running, its merge running.
    MergeQueueState, "merge queue state" {
        Waiting => "waiting",
        Updating => "updating",
        Testing => "testing",
        Merging => "merging",
    }
}

sql_enum! {
    /// Which coding agent builds a project's items: Claude Code (the default), Codex,
    /// Gemini CLI, OpenCode, or any command speaking Damascus's `DAMASCUS_*` contract.
    AgentKind, "agent" {
        Claude => "claude",
        Codex => "codex",
        Gemini => "gemini",
        Opencode => "opencode",
        Command => "command",
    }
}

sql_enum! {
    /// How the spec phase treats a story: refined by a model, or taken as it is.
    SpecMode, "spec mode" {
        Refine => "refine",
        Passthrough => "passthrough",
    }
}

sql_enum! {
    /// What incurred a cost: a model call of the spec-refiner or a coding-agent run.
    CostSource, "cost source" {
        Llm => "llm",
        Agent => "agent",
    }
}

sql_enum! {
    /// The life of a question put to a person.
    HumanIssueStatus, "human issue status" {
        Open => "open",
        Answered => "answered",
        Dismissed => "dismissed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_round_trips_through_its_spelling() {
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(*phase));
        }
    }

    #[test]
    fn unknown_phase_names_the_allowed_values() {
        let err = "done".parse::<Phase>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown phase \"done\"; use one of: intake, spec, build, review, merged, blocked, cancelled"
        );
    }

    #[test]
    fn final_and_working_phases() {
        assert!(Phase::Merged.is_final());
        assert!(!Phase::Blocked.is_final());
        assert!(Phase::Review.is_working());
        assert!(!Phase::Intake.is_working());
    }
}
