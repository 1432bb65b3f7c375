//! Registering and trying a webhook, the same for the CLI and the API: what makes a
//! webhook valid (name, URL, secret, event filter, attempts), a new secret when none
//! is given, and one signed `webhook.test` delivery sent now.

use std::time::Duration;

use damascus_core::webhook::{self as rules, WebhookRuleError};
use damascus_db::events::Event;
use damascus_db::webhooks::{NewWebhook, Outcome, Webhook};

use crate::signature::{self, SecretError};
use crate::{host_of, post};

/// A webhook as a person asks for it.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest {
    pub name: String,
    pub url: String,
    /// `None`: a new random secret.
    pub secret: Option<String>,
    /// Empty: every kind.
    pub events: Vec<String>,
    /// `None`: `damascus_core::webhook::DEFAULT_ATTEMPTS`.
    pub max_attempts: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRequestError {
    #[error(transparent)]
    Rule(#[from] WebhookRuleError),
    /// Carries the host only: a URL's path or query may hold a token.
    #[error("webhook URL {0} is not an http:// or https:// URL with a host (e.g. https://chat.example.com/hooks/damascus)")]
    Url(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl WebhookRequestError {
    /// The request field that was wrong, for the API's error messages.
    pub fn field(&self) -> &'static str {
        match self {
            WebhookRequestError::Rule(WebhookRuleError::Name(_)) => "name",
            WebhookRequestError::Rule(WebhookRuleError::EventKind(_)) => "events",
            WebhookRequestError::Rule(WebhookRuleError::MaxAttempts(_)) => "max_attempts",
            WebhookRequestError::Url(_) => "url",
            WebhookRequestError::Secret(_) => "secret",
        }
    }
}

/// Checks a request and completes it (a new secret when none is given).
pub fn new_webhook(request: WebhookRequest) -> Result<NewWebhook, WebhookRequestError> {
    rules::check_name(&request.name)?;
    let url_ok = reqwest::Url::parse(&request.url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !url_ok {
        let shown = if request.url.contains("://") {
            host_of(&request.url)
        } else {
            "(no scheme)".to_owned()
        };
        return Err(WebhookRequestError::Url(shown));
    }
    let event_kinds = rules::check_event_kinds(&request.events)?;
    let max_attempts = match request.max_attempts {
        Some(n) => rules::check_max_attempts(n)?,
        None => rules::DEFAULT_ATTEMPTS,
    };
    let secret = match request.secret {
        Some(secret) => {
            signature::parse_secret(&secret)?;
            secret
        }
        None => signature::new_secret(),
    };
    Ok(NewWebhook {
        name: request.name,
        url: request.url,
        secret,
        event_kinds,
        max_attempts,
    })
}

/// Sends one signed `webhook.test` event (id 0, no item) to `webhook` now, outside its
/// deliveries; the outcome says what the receiver answered.
pub async fn send_test(webhook: &Webhook) -> Outcome {
    let failed = |error: String| Outcome::Failed {
        status: None,
        error,
        retry_in: Duration::ZERO,
    };
    let key = match signature::parse_secret(&webhook.secret) {
        Ok(key) => key,
        Err(e) => return failed(e.to_string()),
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(e) => return failed(format!("cannot build an HTTP client: {e}")),
    };
    let event = Event {
        id: 0,
        item_id: None,
        kind: "webhook.test".into(),
        payload: serde_json::json!({ "webhook": webhook.name }),
        created_at: chrono::Utc::now(),
    };
    post(&http, webhook, &key, &event, Duration::ZERO).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str) -> WebhookRequest {
        WebhookRequest {
            name: "chat".into(),
            url: url.into(),
            ..WebhookRequest::default()
        }
    }

    #[test]
    fn a_plain_request_gets_a_new_secret_and_the_default_attempts() {
        let new = new_webhook(request("https://chat.example.com/hooks?token=abc")).unwrap();
        assert!(new.secret.starts_with("whsec_"));
        assert_eq!(new.max_attempts, rules::DEFAULT_ATTEMPTS);
        assert_eq!(new.event_kinds, None);
    }

    #[test]
    fn a_bad_url_is_refused_without_its_path() {
        for url in [
            "ftp://chat.example.com/x",
            "chat.example.com",
            "https://",
            "mailto:ops@example.com?token=abc",
        ] {
            let error = new_webhook(request(url)).unwrap_err();
            assert_eq!(error.field(), "url", "{url}");
            let message = error.to_string();
            assert!(message.contains("http:// or https://"), "{message}");
            assert!(!message.contains("token"), "{message}");
        }
    }

    #[test]
    fn each_wrong_field_is_named() {
        let mut bad_name = request("https://x.example");
        bad_name.name = "Chat".into();
        assert_eq!(new_webhook(bad_name).unwrap_err().field(), "name");
        let mut bad_event = request("https://x.example");
        bad_event.events = vec!["item.blokced".into()];
        assert_eq!(new_webhook(bad_event).unwrap_err().field(), "events");
        let mut bad_attempts = request("https://x.example");
        bad_attempts.max_attempts = Some(0);
        assert_eq!(
            new_webhook(bad_attempts).unwrap_err().field(),
            "max_attempts"
        );
        let mut bad_secret = request("https://x.example");
        bad_secret.secret = Some("hunter2".into());
        let error = new_webhook(bad_secret).unwrap_err();
        assert_eq!(error.field(), "secret");
        assert!(!error.to_string().contains("hunter2"));
    }
}
