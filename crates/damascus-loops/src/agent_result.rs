//! Reading Claude Code's `--output-format json` result. Claude Code exits 0 even when a
//! permission mode denied the tools it needed, so the exit status alone says little:
//! `is_error`, `subtype` and `permission_denials` decide.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentResult {
    pub is_error: bool,
    pub subtype: String,
    pub num_turns: Option<i64>,
    pub total_cost_usd: Option<f64>,
    pub permission_denials: Vec<String>,
    pub result: String,
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
    })
}

impl AgentResult {
    /// Why this result is a failure, or `None` when it is a success.
    pub fn failure(&self) -> Option<String> {
        if !self.permission_denials.is_empty() {
            return Some(format!(
                "the agent was denied tools it tried to use ({}); allow them with --allowedTools or another permission mode",
                self.permission_denials.join(", ")
            ));
        }
        if self.is_error {
            return Some(format!("the agent reported an error: {}", self.result));
        }
        if self.subtype != "success" {
            return Some(format!(
                "the agent stopped with {:?} instead of success",
                self.subtype
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stdout: &str, failure: Option<&str>) {
        let result = parse(stdout).expect("a result");
        match (result.failure(), failure) {
            (None, None) => {}
            (Some(got), Some(want)) => assert!(got.contains(want), "{got}"),
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
            r#"{"type":"result","subtype":"error_max_turns","is_error":false}"#,
            Some("error_max_turns"),
        );
        check(
            "log line\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}\n",
            None,
        );
        assert_eq!(parse("plain text"), None);
        assert_eq!(parse(r#"{"type":"assistant"}"#), None);
        assert_eq!(
            parse(r#"{"type":"result","subtype":"success","total_cost_usd":0.5}"#)
                .unwrap()
                .total_cost_usd,
            Some(0.5)
        );
    }
}
