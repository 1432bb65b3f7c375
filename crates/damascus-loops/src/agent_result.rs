//! Reading Claude Code's `--output-format json` result. Claude Code exits 0 even when a
//! permission mode denied the tools it needed, so the exit status alone says little:
//! `is_error`, `subtype` and `permission_denials` decide.

use damascus_core::prices::Tokens;
use serde_json::Value;

use crate::agents::{End, ModelSpend};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentResult {
    pub is_error: bool,
    pub subtype: String,
    pub num_turns: Option<i64>,
    pub total_cost_usd: Option<f64>,
    pub permission_denials: Vec<String>,
    pub result: String,
    /// The agent's session, which a later run can continue (`--resume`).
    pub session_id: Option<String>,
    /// What each model spent (`modelUsage`), or the whole run's `usage` under no model
    /// name when the result has no per-model figures.
    pub usage: Vec<ModelUsage>,
}

/// One model's share of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUsage {
    /// `None` when the result names no model.
    pub model: Option<String>,
    /// Input tokens, cached ones (read and written) included.
    pub tokens_in: i64,
    /// Of those, the ones read from the cache.
    pub tokens_cached: i64,
    pub tokens_out: i64,
    /// `None` when the result gives no cost for it.
    pub usd: Option<f64>,
}

/// Reads `modelUsage` (Claude Code's per-model figures, camelCase), else `usage` (the
/// Messages API's, snake_case).
fn usage(object: &serde_json::Map<String, Value>) -> Vec<ModelUsage> {
    let int = |v: &Value, keys: &[&str]| -> i64 {
        keys.iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_i64))
            .sum()
    };
    if let Some(models) = object.get("modelUsage").and_then(Value::as_object) {
        if !models.is_empty() {
            return models
                .iter()
                .map(|(model, u)| ModelUsage {
                    model: Some(model.clone()),
                    tokens_in: int(
                        u,
                        &[
                            "inputTokens",
                            "cacheReadInputTokens",
                            "cacheCreationInputTokens",
                        ],
                    ),
                    tokens_out: int(u, &["outputTokens"]),
                    tokens_cached: int(u, &["cacheReadInputTokens"]),
                    usd: u.get("costUSD").and_then(Value::as_f64),
                })
                .collect();
        }
    }
    match object.get("usage") {
        Some(u) if u.is_object() => vec![ModelUsage {
            model: None,
            tokens_in: int(
                u,
                &[
                    "input_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ],
            ),
            tokens_out: int(u, &["output_tokens"]),
            tokens_cached: int(u, &["cache_read_input_tokens"]),
            usd: None,
        }],
        _ => Vec::new(),
    }
}

/// Finds the result object in the agent's stdout (the whole of it, or its last JSON
/// line); `None` when the agent does not speak this format.
pub fn parse(stdout: &str) -> Option<AgentResult> {
    let value: Value = serde_json::from_str(stdout.trim()).ok().or_else(|| {
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
    })?;
    let object = value.as_object()?;
    if object.get("type").and_then(Value::as_str) != Some("result") {
        return None;
    }
    let denials = object
        .get("permission_denials")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .map(|d| {
                    d.get("tool_name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| d.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Some(AgentResult {
        is_error: object
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        subtype: object
            .get("subtype")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        num_turns: object.get("num_turns").and_then(Value::as_i64),
        total_cost_usd: object.get("total_cost_usd").and_then(Value::as_f64),
        permission_denials: denials,
        result: object
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        session_id: object
            .get("session_id")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
        usage: usage(object),
    })
}

impl AgentResult {
    /// What the run spent, per model when the result has per-model figures (each with
    /// its cost; the rest of `total_cost_usd`, if any, goes to the first), else one
    /// entry under no model name with the run's tokens and total cost.
    pub(crate) fn spend(&self) -> Vec<ModelSpend> {
        let total = self.total_cost_usd.unwrap_or(0.0).max(0.0);
        let tokens = |u: &ModelUsage| Tokens {
            input: u.tokens_in - u.tokens_cached,
            cached_input: u.tokens_cached,
            output: u.tokens_out,
        };
        let per_model: Vec<&ModelUsage> = self.usage.iter().filter(|u| u.model.is_some()).collect();
        if per_model.is_empty() {
            let summed = self.usage.iter().fold(Tokens::default(), |sum, u| {
                let t = tokens(u);
                Tokens {
                    input: sum.input + t.input,
                    cached_input: sum.cached_input + t.cached_input,
                    output: sum.output + t.output,
                }
            });
            if self.total_cost_usd.is_none() && summed.total() == 0 {
                return Vec::new();
            }
            return vec![ModelSpend {
                model: None,
                tokens: summed,
                usd: self.total_cost_usd.map(|_| total),
            }];
        }
        let mut spend: Vec<ModelSpend> = per_model
            .iter()
            .map(|u| ModelSpend {
                model: u.model.clone(),
                tokens: tokens(u),
                usd: Some(u.usd.unwrap_or(0.0).max(0.0)),
            })
            .collect();
        let counted: f64 = spend.iter().filter_map(|s| s.usd).sum();
        if total > counted + 1e-9 {
            spend[0].usd = Some(spend[0].usd.unwrap_or(0.0) + total - counted);
        }
        spend
    }

    /// How the run ended, as the result says.
    pub(crate) fn end(&self) -> End {
        if !self.permission_denials.is_empty() {
            return End::Failure(format!(
                "the agent was denied tools it tried to use ({}); allow them with --allowedTools or another permission mode",
                self.permission_denials.join(", ")
            ));
        }
        match self.subtype.as_str() {
            "error_max_turns" => {
                return End::TurnLimit(format!(
                    "the agent used all its turns ({}) before it finished",
                    self.num_turns
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "the limit".into())
                ))
            }
            "error_max_budget_usd" => {
                return End::BudgetLimit(
                    "the agent stopped at the budget reserved for it before it finished".into(),
                )
            }
            _ => {}
        }
        if self.is_error {
            return End::Failure(format!("the agent reported an error: {}", self.result));
        }
        if self.subtype != "success" {
            return End::Failure(format!(
                "the agent stopped with {:?} instead of success",
                self.subtype
            ));
        }
        End::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stdout: &str, failure: Option<&str>) {
        let result = parse(stdout).expect("a result");
        match (result.end(), failure) {
            (End::Success, None) => {}
            (End::Failure(got) | End::TurnLimit(got) | End::BudgetLimit(got), Some(want)) => {
                assert!(got.contains(want), "{got}")
            }
            (got, want) => panic!("{got:?} vs {want:?}"),
        }
    }

    #[test]
    fn results() {
        check(
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"total_cost_usd":0.12,"permission_denials":[],"result":"done"}"#,
            None,
        );
        check(
            r#"{"type":"result","subtype":"success","is_error":false,"permission_denials":[{"tool_name":"Bash","tool_use_id":"x"}]}"#,
            Some("denied tools it tried to use (Bash)"),
        );
        check(
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API error"}"#,
            Some("reported an error: API error"),
        );
        check(
            r#"{"type":"result","subtype":"error_max_turns","is_error":false,"num_turns":30}"#,
            Some("used all its turns (30)"),
        );
        check(
            "log line\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}\n",
            None,
        );
        assert_eq!(parse("plain text"), None);
        // Per-model figures name the models and their tokens; the total is kept.
        let capped = parse(r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true,"total_cost_usd":0.0128,"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":40},"modelUsage":{"claude-sonnet-4-5":{"inputTokens":5,"outputTokens":40,"cacheReadInputTokens":100,"cacheCreationInputTokens":0,"costUSD":0.0120},"claude-haiku-4-5":{"inputTokens":7,"outputTokens":3,"costUSD":0.0008}}}"#).unwrap();
        assert!(matches!(capped.end(), End::BudgetLimit(_)));
        let mut spend = capped.spend();
        spend.sort_by(|a, b| a.model.cmp(&b.model));
        let rows: Vec<(Option<&str>, Tokens)> = spend
            .iter()
            .map(|s| (s.model.as_deref(), s.tokens))
            .collect();
        let t = |input, cached_input, output| Tokens {
            input,
            cached_input,
            output,
        };
        assert_eq!(
            rows,
            [
                (Some("claude-haiku-4-5"), t(7, 0, 3)),
                (Some("claude-sonnet-4-5"), t(5, 100, 40))
            ]
        );
        let total: f64 = spend.iter().filter_map(|s| s.usd).sum();
        assert!((total - 0.0128).abs() < 1e-9, "{total}");
        // Only `usage`: one entry under no model name.
        let plain = parse(r#"{"type":"result","subtype":"success","total_cost_usd":0.2,"usage":{"input_tokens":10,"output_tokens":2}}"#).unwrap();
        assert_eq!(
            plain.spend(),
            [ModelSpend {
                model: None,
                tokens: t(10, 0, 2),
                usd: Some(0.2)
            }]
        );
        // No figures at all: nothing spent.
        assert!(parse(r#"{"type":"result","subtype":"success"}"#)
            .unwrap()
            .spend()
            .is_empty());
        assert_eq!(parse(r#"{"type":"assistant"}"#), None);
        assert_eq!(
            parse(r#"{"type":"result","subtype":"success","total_cost_usd":0.5}"#)
                .unwrap()
                .total_cost_usd,
            Some(0.5)
        );
    }
}
