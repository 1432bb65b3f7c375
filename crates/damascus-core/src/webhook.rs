//! The event vocabulary webhooks subscribe to, and the rules for a webhook's name,
//! event filter and attempts, shared by the CLI and the API so both refuse the same
//! input with the same words.

/// Every kind of event the outbox holds. A webhook's filter may name only these, so a
/// typo is refused instead of silently receiving nothing.
pub const EVENT_KINDS: &[&str] = &[
    "item.ingested",
    "item.phase_changed",
    "item.blocked",
    "item.approved",
    "item.cancelled",
    "item.retried",
    "job.retry_scheduled",
    "job.waiting",
    "agent.session",
    "human_issue.answered",
    "merge_queue.entered",
    "merge_queue.left",
    "project.paused",
    "project.resumed",
    "webhook.test",
];

/// Attempts per event a webhook may be given before its delivery is dead.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<i64> = 1..=100;

/// Attempts per event when none are given.
pub const DEFAULT_ATTEMPTS: i32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRuleError {
    #[error("webhook name {0:?} must be 1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. chat)")]
    Name(String),
    #[error("event kind {0:?} is not one Damascus writes; use one of: {kinds}", kinds = EVENT_KINDS.join(", "))]
    EventKind(String),
    #[error("max_attempts must be between 1 and 100, got {0}")]
    MaxAttempts(i64),
}

/// A webhook's name: it appears in metrics labels and URLs of the API.
pub fn check_name(name: &str) -> Result<(), WebhookRuleError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(WebhookRuleError::Name(name.to_owned()))
    }
}

/// The filter of event kinds: `None` for an empty list (every kind), each named kind
/// known, duplicates removed (in the given order).
pub fn check_event_kinds(kinds: &[String]) -> Result<Option<Vec<String>>, WebhookRuleError> {
    let mut out: Vec<String> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let kind = kind.trim();
        if !EVENT_KINDS.contains(&kind) {
            return Err(WebhookRuleError::EventKind(kind.to_owned()));
        }
        if !out.iter().any(|k| k == kind) {
            out.push(kind.to_owned());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

pub fn check_max_attempts(attempts: i64) -> Result<i32, WebhookRuleError> {
    if MAX_ATTEMPTS.contains(&attempts) {
        Ok(attempts as i32)
    } else {
        Err(WebhookRuleError::MaxAttempts(attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_safe_alphabet() {
        for good in ["chat", "0", "ops.pager", "a-b_c", &"x".repeat(63)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Chat", "-x", ".x", "a b", "a/b", &"x".repeat(64)] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("lowercase letters"), "{bad}: {error}");
        }
    }

    #[test]
    fn event_filters_name_known_kinds_only() {
        assert_eq!(check_event_kinds(&[]), Ok(None));
        assert_eq!(
            check_event_kinds(&["item.blocked".into(), " item.blocked ".into()]),
            Ok(Some(vec!["item.blocked".into()]))
        );
        let error = check_event_kinds(&["item.blokced".into()]).unwrap_err();
        assert_eq!(error, WebhookRuleError::EventKind("item.blokced".into()));
        let message = error.to_string();
        assert!(message.contains("item.phase_changed"), "{message}");
    }

    #[test]
    fn attempts_are_bounded() {
        assert_eq!(check_max_attempts(1), Ok(1));
        assert_eq!(check_max_attempts(100), Ok(100));
        assert_eq!(
            check_max_attempts(0).unwrap_err().to_string(),
            "max_attempts must be between 1 and 100, got 0"
        );
        assert!(check_max_attempts(i64::MAX).is_err());
    }
}
