//! The deployment's secrets, masked in what a phase hands back before it is stored: a
//! verdict's reason, log tail, question and context end up in the database, in event
//! payloads and on webhooks, and an agent or a tool may print a token it was given.
//!
//! Only known values are masked: the forge tokens, the model's API key and the agent's
//! variables whose names say they hold a secret. Values shorter than `MIN_SECRET_LEN`
//! are left alone: masking `1234` would garble ordinary text and hide nothing.

use damascus_core::{PhaseReport, Verdict};

use crate::LoopsConfig;

/// The shortest value treated as a secret.
const MIN_SECRET_LEN: usize = 8;

/// What replaces a secret.
const MASK: &str = "***";

/// Name parts of an agent variable that holds a secret (`ANTHROPIC_API_KEY`,
/// `ANTHROPIC_AUTH_TOKEN`, `DB_PASSWORD`).
const SECRET_NAMES: [&str; 4] = ["KEY", "TOKEN", "SECRET", "PASSWORD"];

/// The secret values to mask, longest first (a secret that contains another is masked
/// whole).
#[derive(Default)]
pub(crate) struct Secrets {
    values: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.values.len())
    }
}

impl Secrets {
    pub fn from_config(config: &LoopsConfig) -> Secrets {
        let agent = config.agent_env.iter().filter_map(|(name, value)| {
            let name = name.to_ascii_uppercase();
            SECRET_NAMES
                .iter()
                .any(|part| name.contains(part))
                .then_some(value)
        });
        let llm = config.llm.as_ref().and_then(|llm| llm.api_key.as_ref());
        Secrets::new(
            [&config.gitea_token, &config.github_token]
                .into_iter()
                .flatten()
                .chain(llm)
                .chain(agent)
                .cloned(),
        )
    }

    pub fn new(values: impl IntoIterator<Item = String>) -> Secrets {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.chars().count() >= MIN_SECRET_LEN)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Secrets { values }
    }

    /// `text` with every secret in it replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.values {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), MASK);
            }
        }
        text
    }

    fn scrub_in_place(&self, text: &mut String) {
        if self.values.iter().any(|s| text.contains(s.as_str())) {
            *text = self.scrub(text);
        }
    }

    /// The verdict with its texts scrubbed.
    pub fn verdict(&self, verdict: &mut Verdict) {
        match verdict {
            Verdict::Pass(_) => {}
            Verdict::Fail { reason, log_tail } => {
                self.scrub_in_place(reason);
                self.scrub_in_place(log_tail);
            }
            Verdict::NeedsHuman { question, context } => {
                self.scrub_in_place(question);
                self.scrub_in_place(context);
            }
            Verdict::TransientError { reason } | Verdict::Deferred { reason, .. } => {
                self.scrub_in_place(reason)
            }
        }
    }

    /// The report with its verdict and every batch verdict scrubbed.
    pub fn report(&self, mut report: PhaseReport) -> PhaseReport {
        if self.values.is_empty() {
            return report;
        }
        self.verdict(&mut report.verdict);
        for batch in &mut report.batch {
            self.verdict(&mut batch.verdict);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damascus_core::{BatchVerdict, PhaseOutput};

    fn config() -> LoopsConfig {
        LoopsConfig {
            data_dir: "/srv/damascus".into(),
            llm: Some(crate::LlmConfig {
                base_url: "http://litellm:4000/v1".into(),
                api_key: Some("sk-llm-0123456789".into()),
                model: "m".into(),
                timeout: std::time::Duration::from_secs(1),
                prices: Default::default(),
            }),
            identity: damascus_git::Identity::default(),
            agent_env: vec![
                ("ANTHROPIC_API_KEY".into(), "sk-ant-abcdefgh".into()),
                ("anthropic_auth_token".into(), "bearer-12345678".into()),
                ("DB_PASSWORD".into(), "hunter2-hunter2".into()),
                ("CLIENT_SECRET".into(), "client-secret-1".into()),
                ("SHORT_TOKEN".into(), "1234567".into()),
                (
                    "ANTHROPIC_BASE_URL".into(),
                    "http://proxy.internal:8080".into(),
                ),
            ],
            claude_max_turns: 5,
            gitea_token: Some("gitea-0123456789".into()),
            github_token: Some("ghp_abcdefghijkl".into()),
            git_timeout: std::time::Duration::from_secs(1),
            github_write_gap: std::time::Duration::from_millis(20),
            head_wait: crate::DEFAULT_HEAD_WAIT,
            prices: damascus_core::prices::PriceTable::built_in(),
            agent_user: None,
        }
    }

    fn check(text: &str, expected: &str) {
        assert_eq!(Secrets::from_config(&config()).scrub(text), expected);
    }

    #[test]
    fn known_secrets_are_masked() {
        check("token gitea-0123456789 refused", "token *** refused");
        check(
            "Authorization: token ghp_abcdefghijkl",
            "Authorization: token ***",
        );
        check("key=sk-llm-0123456789&x=1", "key=***&x=1");
        check("sk-ant-abcdefgh sk-ant-abcdefgh", "*** ***");
        check("bearer-12345678", "***");
        check("psql://u:hunter2-hunter2@db", "psql://u:***@db");
        check("client-secret-1.", "***.");
        check("nothing secret here", "nothing secret here");
    }

    #[test]
    fn short_values_and_other_variables_are_left_alone() {
        check("pin 1234567", "pin 1234567");
        check(
            "cannot reach http://proxy.internal:8080",
            "cannot reach http://proxy.internal:8080",
        );
    }

    #[test]
    fn a_secret_inside_a_longer_one_is_masked_whole() {
        let secrets = Secrets::new(["abcdefgh".to_owned(), "abcdefgh-longer".to_owned()]);
        assert_eq!(secrets.scrub("x abcdefgh-longer y abcdefgh"), "x *** y ***");
    }

    #[test]
    fn every_text_of_a_report_is_scrubbed() {
        let secrets = Secrets::new(["tok-0123456789".to_owned()]);
        let mut report = PhaseReport::new(
            Verdict::Fail {
                reason: "push with tok-0123456789 failed".into(),
                log_tail: "echo tok-0123456789".into(),
            },
            Vec::new(),
        );
        report.batch = vec![
            BatchVerdict {
                item_id: 2,
                verdict: Verdict::NeedsHuman {
                    question: "why tok-0123456789?".into(),
                    context: "tok-0123456789".into(),
                },
            },
            BatchVerdict {
                item_id: 3,
                verdict: Verdict::TransientError {
                    reason: "tok-0123456789 expired".into(),
                },
            },
            BatchVerdict {
                item_id: 4,
                verdict: Verdict::Pass(PhaseOutput::default()),
            },
        ];
        let report = secrets.report(report);
        assert_eq!(
            report.verdict,
            Verdict::Fail {
                reason: "push with *** failed".into(),
                log_tail: "echo ***".into(),
            }
        );
        assert_eq!(
            report.batch[0].verdict,
            Verdict::NeedsHuman {
                question: "why ***?".into(),
                context: "***".into(),
            }
        );
        assert_eq!(
            report.batch[1].verdict,
            Verdict::TransientError {
                reason: "*** expired".into(),
            }
        );
        assert_eq!(report.batch[2].verdict, Verdict::pass());
    }
}
