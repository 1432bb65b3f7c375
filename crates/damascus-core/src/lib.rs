//! Damascus's domain: the phases a work item moves through, the verdicts a phase ends
//! in, the shape of a story and of a project, and the rules that validate them.
//!
//! Architecture invariant: this crate does no IO. No database, no files, no network,
//! no clock. Everything here is a pure function or a plain type, so every other crate
//! can depend on it and every rule can be unit-tested without a server.

pub mod names;
pub mod phase;
pub mod prices;
pub mod project;
pub mod spec;
pub mod story;
pub mod transcript;
pub mod verdict;
pub mod webhook;

pub use names::{LockName, LockNameError, NameError, ProjectName};
pub use phase::{
    AgentKind, BranchUpdate, CostSource, ForgeKind, HumanIssueStatus, MergeMethod, MergeQueueState,
    Phase, Sandbox, SpecMode, UnknownVariant, VerdictKind,
};
pub use project::{NewProject, ProjectError};
pub use spec::{Spec, SpecError};
pub use story::{Story, StoryError};
pub use verdict::{
    answer_hint, decide, next_phase, on_answer, resume, runs_to_merge, BatchVerdict, Budget,
    CostEntry, PhaseOutput, PhaseReport, Resumption, Transition, Unblock, Verdict,
};
