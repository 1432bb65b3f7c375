//! An OpenAI-compatible chat-completions client (a LiteLLM proxy, Ollama, vLLM,
//! OpenAI): one POST to `{base_url}/chat/completions`. The API key is sent as a bearer
//! token and never logged. Cost comes from LiteLLM's `x-litellm-response-cost` header
//! when the proxy sends one, else from the configured per-model prices.

use std::collections::HashMap;
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

    pub async fn chat(&self, system: &str, user: &str) -> Result<LlmReply, LlmError> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut request = self.http.post(&url).json(&json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "temperature": 0,
        }));
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
            });
        }
        if !(200..300).contains(&status) {
            return Err(LlmError::Refused {
                status,
                body: excerpt(&body),
            });
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

fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}
