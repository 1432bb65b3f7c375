//! How a phase ended, and what that means for its item: the transition rules that keep
//! every item moving towards `merged` or `blocked` within its budgets.
//!
//! Attempts: every run that ends in pass, fail or needs-human counts once against the
//! item's per-phase and total budgets. Transient errors do not count here; the queue
//! retries them with backoff, and a job that runs out of retries blocks its item.

use crate::Phase;

/// What a phase produced on a pass, to be stored on the item with the transition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseOutput {
    pub spec: Option<serde_json::Value>,
    pub test_command: Option<String>,
    pub branch: Option<String>,
    pub pr_url: Option<String>,
}

/// The typed end of one phase run.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass(PhaseOutput),
    Fail {
        reason: String,
        log_tail: String,
    },
    NeedsHuman {
        question: String,
        context: String,
    },
    TransientError {
        reason: String,
    },
    /// A service the phase needs (a forge's rate limit) asked to be left alone until
    /// `until`: the job waits until then with its run given back. A wait is not an
    /// attempt: it never counts against a budget, and what the phase finished before it
    /// (an agent's commit, a push) is kept for the run after it.
    Deferred {
        reason: String,
        until: std::time::SystemTime,
    },
}

impl Verdict {
    pub fn kind(&self) -> crate::VerdictKind {
        match self {
            Verdict::Pass(_) => crate::VerdictKind::Pass,
            Verdict::Fail { .. } => crate::VerdictKind::Fail,
            Verdict::NeedsHuman { .. } => crate::VerdictKind::NeedsHuman,
            Verdict::TransientError { .. } | Verdict::Deferred { .. } => {
                crate::VerdictKind::TransientError
            }
        }
    }

    pub fn pass() -> Verdict {
        Verdict::Pass(PhaseOutput::default())
    }
}

/// One model or agent call's spending, recorded with the verdict of its run.
#[derive(Debug, Clone, PartialEq)]
pub struct CostEntry {
    pub source: crate::CostSource,
    pub model: String,
    /// Every input token, cached ones included.
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// How many of `tokens_in` were read from the provider's cache.
    pub tokens_cached: i64,
    /// The price `usd` was computed at (`prices::FoundPrice::label`), or `None` when
    /// the agent or the endpoint reported the dollars.
    pub price: Option<String>,
    pub usd: f64,
}

/// What a phase run hands back: its verdict and what it spent on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    pub verdict: Verdict,
    pub costs: Vec<CostEntry>,
    /// Verdicts this run reached for other items: the followers of a merge-queue batch
    /// that the run tested (and perhaps merged) together with its own item. They are
    /// recorded in the transaction that records `verdict`; a follower that is no longer
    /// waiting in review by then is left as it is.
    pub batch: Vec<BatchVerdict>,
}

/// A verdict for an item other than the run's own (see `PhaseReport::batch`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchVerdict {
    pub item_id: i64,
    pub verdict: Verdict,
}

impl PhaseReport {
    pub fn new(verdict: Verdict, costs: Vec<CostEntry>) -> PhaseReport {
        PhaseReport {
            verdict,
            costs,
            batch: Vec::new(),
        }
    }
}

impl From<Verdict> for PhaseReport {
    fn from(verdict: Verdict) -> PhaseReport {
        PhaseReport::new(verdict, Vec::new())
    }
}

/// The counters and limits of an item, as the transition rules need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub phase_attempts: i32,
    pub attempts_total: i32,
    pub max_attempts_per_phase: i32,
    pub max_attempts_total: i32,
}

/// Where an item goes after a counted verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub phase: Phase,
    /// Set when `phase` is `blocked`: where the item resumes once answered.
    pub resume_phase: Option<Phase>,
    pub phase_attempts: i32,
    pub attempts_total: i32,
    /// Set when the item is blocked: the question its human issue asks.
    pub question: Option<String>,
}

/// The phase after a pass in `phase`.
pub fn next_phase(phase: Phase) -> Phase {
    match phase {
        Phase::Intake => Phase::Spec,
        Phase::Spec => Phase::Build,
        Phase::Build => Phase::Review,
        Phase::Review => Phase::Merged,
        other => other,
    }
}

/// Applies a pass, fail or needs-human verdict of a run in `phase` to the budget.
/// Transient errors are the queue's business and are refused here.
pub fn decide(phase: Phase, budget: Budget, verdict: &Verdict) -> Transition {
    let attempts_total = budget.attempts_total + 1;
    let phase_attempts = budget.phase_attempts + 1;
    let blocked = |question: String, phase_attempts: i32| Transition {
        phase: Phase::Blocked,
        resume_phase: Some(phase),
        phase_attempts,
        attempts_total,
        question: Some(question),
    };
    match verdict {
        Verdict::Pass(_) => {
            let next = next_phase(phase);
            if next != Phase::Merged && attempts_total >= budget.max_attempts_total {
                return Transition {
                    resume_phase: Some(next),
                    ..blocked(
                        format!(
                            "{phase} passed, but the item has used all {} attempts of its total budget; raise the budget and retry, or cancel it",
                            budget.max_attempts_total
                        ),
                        0,
                    )
                };
            }
            Transition {
                phase: next,
                resume_phase: None,
                phase_attempts: 0,
                attempts_total,
                question: None,
            }
        }
        Verdict::Fail { reason, .. } => {
            if attempts_total >= budget.max_attempts_total {
                return blocked(
                    format!(
                        "{phase} failed and the item has used all {} attempts of its total budget; last failure: {reason}",
                        budget.max_attempts_total
                    ),
                    phase_attempts,
                );
            }
            // A failed review sends the change back to build, with the failure as feedback.
            if phase == Phase::Review {
                return Transition {
                    phase: Phase::Build,
                    resume_phase: None,
                    phase_attempts: 0,
                    attempts_total,
                    question: None,
                };
            }
            if phase_attempts >= budget.max_attempts_per_phase {
                return blocked(
                    format!(
                        "{phase} failed {phase_attempts} times, its whole per-phase budget; last failure: {reason}"
                    ),
                    phase_attempts,
                );
            }
            Transition {
                phase,
                resume_phase: None,
                phase_attempts,
                attempts_total,
                question: None,
            }
        }
        Verdict::NeedsHuman { question, .. } => blocked(question.clone(), phase_attempts),
        Verdict::TransientError { reason } | Verdict::Deferred { reason, .. } => blocked(
            format!("{phase} hit a transient error that was not retried: {reason}"),
            budget.phase_attempts,
        ),
    }
}

/// Where a blocked item resumes when a person answers its question, from why it
/// stopped: `left` is the phase it would re-run as it is (its `resume_phase`), `verdict`
/// the verdict that blocked it. A change that failed (its build, or its tests in review)
/// is rebuilt, with the answer in the agent's prompt: re-running the same tests on the
/// same commit would fail the same way. Anything else resumes where it left: a question
/// a phase asked (the spec-refiner's, a forge's refusal), a budget spent after a pass, a
/// transient failure out of retries.
pub fn on_answer(left: Phase, verdict: crate::VerdictKind) -> Phase {
    match (verdict, left) {
        (crate::VerdictKind::Fail, Phase::Build | Phase::Review) => Phase::Build,
        _ => left,
    }
}

/// Why a blocked item leaves `blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unblock {
    /// A person answered its question: it resumes in `on_answer` (where the question
    /// said an answer takes it) with room for `rounds` rounds from there to merged.
    Answered { on_answer: Phase, rounds: i32 },
    /// An operator retried it: the phase it left runs again as it is, with its whole
    /// budget back.
    Retried,
}

/// Where a blocked item goes when it is unblocked, and the counters it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    pub phase: Phase,
    pub phase_attempts: i32,
    pub attempts_total: i32,
    pub max_attempts_total: i32,
}

/// Unblocks an item that left `left` (its `resume_phase`) with `budget`: the one rule
/// for every way out of `blocked` that continues the work. Every way starts the phase's
/// own count afresh (a person changed something). An answer keeps the total spent and
/// raises the total limit, when needed, to fit the granted rounds (runs from the phase
/// it resumes in to merged, times `rounds`); a retry starts the total count afresh too.
pub fn resume(left: Phase, budget: Budget, why: Unblock) -> Resumption {
    match why {
        Unblock::Answered { on_answer, rounds } => Resumption {
            phase: on_answer,
            phase_attempts: 0,
            attempts_total: budget.attempts_total,
            max_attempts_total: budget
                .max_attempts_total
                .max(budget.attempts_total + runs_to_merge(on_answer) * rounds.max(1)),
        },
        Unblock::Retried => Resumption {
            phase: left,
            phase_attempts: 0,
            attempts_total: 0,
            max_attempts_total: budget.max_attempts_total,
        },
    }
}

/// The counted runs an item needs at the least from `phase` to merged: one per phase
/// still ahead of it, this one included. An answer grants at least this many.
pub fn runs_to_merge(phase: Phase) -> i32 {
    match phase {
        Phase::Intake | Phase::Spec => 3,
        Phase::Build => 2,
        Phase::Review => 1,
        _ => 0,
    }
}

/// What answering a question does, and the operator's other ways out, in the words the
/// CLI, the API, MCP and the web UI show with the question.
pub fn answer_hint(item_id: i64, left: Phase, on_answer: Phase) -> String {
    let answer = match on_answer {
        Phase::Build => "answer with guidance to rebuild the change with it",
        Phase::Spec => "answer with guidance to write the spec again with it",
        Phase::Review => "answer to send it to the merge queue again",
        _ => "answer to resume it",
    };
    format!(
        "{answer}; `damascus item retry {item_id}` re-runs {left} as it is; `damascus item cancel {item_id}` stops it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Budget = Budget {
        phase_attempts: 0,
        attempts_total: 0,
        max_attempts_per_phase: 2,
        max_attempts_total: 5,
    };

    fn fail() -> Verdict {
        Verdict::Fail {
            reason: "tests failed".into(),
            log_tail: String::new(),
        }
    }

    fn check(phase: Phase, budget: Budget, verdict: Verdict, to: Phase, resume: Option<Phase>) {
        let t = decide(phase, budget, &verdict);
        assert_eq!(
            (t.phase, t.resume_phase),
            (to, resume),
            "{phase} {verdict:?} -> {t:?}"
        );
        assert_eq!(t.question.is_some(), to == Phase::Blocked);
    }

    #[test]
    fn an_answer_resumes_where_it_says_with_room_for_its_rounds() {
        let spent = Budget {
            phase_attempts: 2,
            attempts_total: 5,
            ..FRESH
        };
        let answered = |on_answer, rounds| {
            resume(
                Phase::Review,
                spent,
                Unblock::Answered { on_answer, rounds },
            )
        };
        assert_eq!(
            answered(Phase::Build, 1),
            Resumption {
                phase: Phase::Build,
                phase_attempts: 0,
                attempts_total: 5,
                max_attempts_total: 7,
            }
        );
        assert_eq!(answered(Phase::Build, 3).max_attempts_total, 11);
        // A limit already above what the rounds need stays.
        let roomy = Budget {
            max_attempts_total: 20,
            ..spent
        };
        let resumed = resume(
            Phase::Spec,
            roomy,
            Unblock::Answered {
                on_answer: Phase::Spec,
                rounds: 1,
            },
        );
        assert_eq!(
            (resumed.phase, resumed.max_attempts_total),
            (Phase::Spec, 20)
        );
    }

    #[test]
    fn a_retry_reruns_the_phase_it_left_with_the_whole_budget() {
        let spent = Budget {
            phase_attempts: 2,
            attempts_total: 5,
            ..FRESH
        };
        assert_eq!(
            resume(Phase::Review, spent, Unblock::Retried),
            Resumption {
                phase: Phase::Review,
                phase_attempts: 0,
                attempts_total: 0,
                max_attempts_total: 5,
            }
        );
    }

    #[test]
    fn passes_move_forward() {
        check(Phase::Spec, FRESH, Verdict::pass(), Phase::Build, None);
        check(Phase::Build, FRESH, Verdict::pass(), Phase::Review, None);
        check(Phase::Review, FRESH, Verdict::pass(), Phase::Merged, None);
    }

    #[test]
    fn failures_retry_then_block() {
        check(Phase::Build, FRESH, fail(), Phase::Build, None);
        let used_one = Budget {
            phase_attempts: 1,
            attempts_total: 1,
            ..FRESH
        };
        check(
            Phase::Build,
            used_one,
            fail(),
            Phase::Blocked,
            Some(Phase::Build),
        );
        check(Phase::Review, used_one, fail(), Phase::Build, None);
    }

    #[test]
    fn total_budget_bounds_build_review_ping_pong() {
        let nearly = Budget {
            phase_attempts: 0,
            attempts_total: 4,
            ..FRESH
        };
        check(
            Phase::Review,
            nearly,
            fail(),
            Phase::Blocked,
            Some(Phase::Review),
        );
        check(
            Phase::Build,
            nearly,
            Verdict::pass(),
            Phase::Blocked,
            Some(Phase::Review),
        );
        check(Phase::Review, nearly, Verdict::pass(), Phase::Merged, None);
    }

    #[test]
    fn questions_block_and_resume_in_place() {
        let t = decide(
            Phase::Spec,
            FRESH,
            &Verdict::NeedsHuman {
                question: "Which database?".into(),
                context: String::new(),
            },
        );
        assert_eq!(t.phase, Phase::Blocked);
        assert_eq!(t.resume_phase, Some(Phase::Spec));
        assert_eq!(t.question.as_deref(), Some("Which database?"));
        assert_eq!((t.phase_attempts, t.attempts_total), (1, 1));
    }

    #[test]
    fn an_answer_resumes_where_the_cause_of_the_block_says() {
        use crate::VerdictKind::*;
        let check =
            |left, verdict, to| assert_eq!(on_answer(left, verdict), to, "{left} {verdict}");
        // A failure in review or build: rebuild with the answer.
        check(Phase::Review, Fail, Phase::Build);
        check(Phase::Build, Fail, Phase::Build);
        // The spec failed or asked: write it again.
        check(Phase::Spec, Fail, Phase::Spec);
        check(Phase::Spec, NeedsHuman, Phase::Spec);
        // A question a forge or a budget raised: resume where it stopped.
        check(Phase::Build, NeedsHuman, Phase::Build);
        check(Phase::Review, NeedsHuman, Phase::Review);
        // A pass that used the last attempt: go on.
        check(Phase::Review, Pass, Phase::Review);
        // A transient failure out of retries: the phase it left.
        check(Phase::Review, TransientError, Phase::Review);
        check(Phase::Spec, TransientError, Phase::Spec);
        assert_eq!(
            (
                runs_to_merge(Phase::Spec),
                runs_to_merge(Phase::Build),
                runs_to_merge(Phase::Review)
            ),
            (3, 2, 1)
        );
        assert_eq!(
            answer_hint(7, Phase::Review, Phase::Build),
            "answer with guidance to rebuild the change with it; `damascus item retry 7` re-runs review as it is; `damascus item cancel 7` stops it"
        );
    }

    /// Termination: any sequence of counted verdicts reaches a final or blocked phase
    /// within the total budget.
    #[test]
    fn every_item_terminates_within_its_budget() {
        let verdicts = [Verdict::pass(), fail()];
        for seed in 0u32..256 {
            let mut phase = Phase::Spec;
            let mut budget = FRESH;
            let mut steps = 0;
            while phase.is_working() {
                let verdict = &verdicts[((seed >> (steps % 8)) & 1) as usize];
                let t = decide(phase, budget, verdict);
                phase = t.phase;
                budget.phase_attempts = t.phase_attempts;
                budget.attempts_total = t.attempts_total;
                steps += 1;
                assert!(
                    steps <= FRESH.max_attempts_total,
                    "seed {seed} ran past its budget"
                );
            }
        }
    }
}
