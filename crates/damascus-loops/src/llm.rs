//! An OpenAI-compatible chat-completions client (a LiteLLM proxy, Ollama, vLLM,
//! OpenAI): one POST to `{base_url}/chat/completions`. The API key is sent as a bearer
//! token and never logged. Cost comes from LiteLLM's `x-litellm-response-cost` header
//! when the proxy sends one, else from the configured per-model prices.
//!
//! The reply's shape goes with the request as a strict JSON schema (`response_format`).
//! An endpoint that refuses `response_format` (a 400 naming it) is asked again at once
//! without it, the caller's prompt being what asks for JSON then; the refusal is
//! remembered for that base URL and model until the process ends, so it costs one
//! request per process, never an attempt of the item.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone)]
pub struct LlmConfig {
    /// e.g. `http://litellm:4000/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout: Duration,
    /// USD per million tokens (input, output), by model name.
    pub prices: HashMap<String, (f64, f64)>,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmReply {
    pub content: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub usd: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the model endpoint: {0}")]
    Transport(String),
    /// 429 and 5xx: worth retrying.
    #[error("the model endpoint answered {status}: {body}")]
    Unavailable { status: u16, body: String },
    /// Other 4xx: a configuration problem (key, model name) a person must fix.
    #[error("the model endpoint refused the request with {status}: {body}; check the base URL, API key and model name")]
    Refused { status: u16, body: String },
    #[error("the model endpoint's reply is not a chat completion: {0}")]
    Malformed(String),
}

/// The shape a reply must have: a JSON schema that strict mode accepts (every property
/// required, no others allowed).
#[derive(Debug, Clone)]
pub struct ReplySchema {
    /// The schema's name in `response_format` (letters, digits, `_` and `-`).
    pub name: &'static str,
    pub schema: Value,
}

/// The endpoints (base URL, model) that refused `response_format`, for the life of the
/// process: every client in it, whichever `Loops` built it, asks them in prose only.
static REFUSES_RESPONSE_FORMAT: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

pub struct LlmClient {
    http: reqwest::Client,
    config: LlmConfig,
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        Ok(LlmClient { http, config })
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// Asks for a reply of `shape`: with `response_format`, or in prose only when this
    /// endpoint and model refused it before in this process (or refuse it now).
    pub async fn chat(
        &self,
        system: &str,
        user: &str,
        shape: &ReplySchema,
    ) -> Result<LlmReply, LlmError> {
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "temperature": 0,
        });
        if self.refuses_response_format() {
            return self.send(&body).await.map_err(Rejection::into_error);
        }
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": shape.name, "strict": true, "schema": shape.schema},
        });
        match self.send(&body).await {
            Err(Rejection::ResponseFormat(_)) => {
                self.remember_refusal();
                body.as_object_mut()
                    .expect("the request body is an object")
                    .remove("response_format");
                self.send(&body).await.map_err(Rejection::into_error)
            }
            other => other.map_err(Rejection::into_error),
        }
    }

    fn endpoint(&self) -> (String, String) {
        (
            self.config.base_url.trim_end_matches('/').to_owned(),
            self.config.model.clone(),
        )
    }

    fn refuses_response_format(&self) -> bool {
        REFUSES_RESPONSE_FORMAT
            .lock()
            .expect("no thread panics holding the set")
            .contains(&self.endpoint())
    }

    fn remember_refusal(&self) {
        let newly = REFUSES_RESPONSE_FORMAT
            .lock()
            .expect("no thread panics holding the set")
            .insert(self.endpoint());
        if newly {
            tracing::warn!(
                base_url = %shown_url(&self.config.base_url),
                model = %self.config.model,
                "the model endpoint refuses response_format; the spec-refiner asks for JSON in the prompt only, for the rest of this process"
            );
        }
    }

    async fn send(&self, body: &Value) -> Result<LlmReply, Rejection> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout(self.config.timeout)
            } else {
                LlmError::Transport(e.without_url().to_string())
            }
        })?;
        let status = response.status().as_u16();
        let header_cost = response
            .headers()
            .get("x-litellm-response-cost")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|c| c.is_finite() && *c >= 0.0);
        let body = response.text().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout(self.config.timeout)
            } else {
                LlmError::Transport(e.without_url().to_string())
            }
        })?;
        if status == 429 || status >= 500 {
            return Err(LlmError::Unavailable {
                status,
                body: excerpt(&body),
            }
            .into());
        }
        if refuses_response_format(status, &body) {
            return Err(Rejection::ResponseFormat(LlmError::Refused {
                status,
                body: excerpt(&body),
            }));
        }
        if !(200..300).contains(&status) {
            return Err(LlmError::Refused {
                status,
                body: excerpt(&body),
            }
            .into());
        }
        let parsed: Value =
            serde_json::from_str(&body).map_err(|e| LlmError::Malformed(e.to_string()))?;
        let content = parsed["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::Malformed("no choices[0].message.content".into()))?
            .to_owned();
        let tokens_in = parsed["usage"]["prompt_tokens"].as_i64().unwrap_or(0);
        let tokens_out = parsed["usage"]["completion_tokens"].as_i64().unwrap_or(0);
        let usd = header_cost.unwrap_or_else(|| {
            self.config
                .prices
                .get(&self.config.model)
                .map(|(input, output)| {
                    (tokens_in as f64 * input + tokens_out as f64 * output) / 1_000_000.0
                })
                .unwrap_or(0.0)
        });
        Ok(LlmReply {
            content,
            tokens_in,
            tokens_out,
            usd,
        })
    }
}

/// Why one request failed. A refusal of `response_format` is answered by asking again
/// without it; to a request that did not carry it, it is the refusal it holds.
enum Rejection {
    ResponseFormat(LlmError),
    Error(LlmError),
}

impl Rejection {
    fn into_error(self) -> LlmError {
        match self {
            Rejection::ResponseFormat(e) | Rejection::Error(e) => e,
        }
    }
}

impl From<LlmError> for Rejection {
    fn from(e: LlmError) -> Rejection {
        Rejection::Error(e)
    }
}

/// A 400 whose body names `response_format` (OpenAI: `"param": "response_format"`;
/// others say it in the message): the endpoint does not take structured output.
fn refuses_response_format(status: u16, body: &str) -> bool {
    status == 400 && body.contains("response_format")
}

/// The base URL without user, password or query, which may hold credentials.
fn shown_url(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(mut url) => {
            // Cannot fail for http(s) URLs, the only ones reqwest sends to.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_response_format() {
        let openai = r#"{"error":{"message":"Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.","type":"invalid_request_error","param":"response_format","code":null}}"#;
        assert!(refuses_response_format(400, openai));
        assert!(refuses_response_format(
            400,
            "unknown field response_format"
        ));
        assert!(!refuses_response_format(
            400,
            r#"{"error":{"message":"model not found","param":"model"}}"#
        ));
        assert!(!refuses_response_format(401, openai));
        assert!(!refuses_response_format(422, openai));
    }

    #[test]
    fn the_logged_url_holds_no_credentials() {
        assert_eq!(
            shown_url("https://user:sk-secret@proxy.example.com/v1?key=sk-other"),
            "https://proxy.example.com/v1"
        );
        assert_eq!(
            shown_url("http://litellm:4000/v1"),
            "http://litellm:4000/v1"
        );
        assert_eq!(shown_url("litellm:4000"), "litellm:4000");
    }
}
