//! The configuration file (`--config PATH` or `DAMASCUS_CONFIG`): TOML whose keys are
//! the settings' names. It is read before the command line is parsed, and each value
//! it sets becomes the default of the matching `DAMASCUS_*` environment variable, so
//! the order of precedence is: command-line flag, environment, file, built-in default.
//! Unknown keys and out-of-range values are refused with the key's name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    database_url: Option<String>,
    data_dir: Option<String>,
    listen: Option<String>,
    public_metrics: Option<bool>,
    concurrency: Option<u32>,
    lease_secs: Option<u64>,
    poll_secs: Option<u64>,
    grace_secs: Option<u64>,
    git_author: Option<String>,
    git_timeout_secs: Option<u64>,
    retention_days: Option<u32>,
    webhooks: Option<Vec<String>>,
    llm: Option<LlmSection>,
    /// Model name → "INPUT/CACHED/OUTPUT" USD per million tokens, for agents that
    /// report tokens but not dollars.
    agent_prices: Option<BTreeMap<String, String>>,
    /// What `damascus project add` and `POST /v1/projects` give a project that names
    /// no agent.
    project_defaults: Option<ProjectDefaults>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectDefaults {
    agent: Option<String>,
    agent_model: Option<String>,
    agent_args: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmSection {
    base_url: Option<String>,
    model: Option<String>,
    api_key: Option<String>,
    timeout_secs: Option<u64>,
    /// Model name → "INPUT/OUTPUT" USD per million tokens.
    prices: Option<BTreeMap<String, String>>,
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    low: T,
    high: T,
) -> anyhow::Result<Option<T>> {
    match value {
        Some(v) if v < low || v > high => bail!("{key} must be between {low} and {high}, got {v}"),
        other => Ok(other),
    }
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        // Not the parser's own rendering: it quotes the offending line, which may hold
        // a secret (an API key under a misspelt name).
        let file: ConfigFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            anyhow::anyhow!("{}{at}: {}", path.display(), e.message())
        })?;
        file.validate()
            .with_context(|| format!("in the configuration file {}", path.display()))?;
        Ok(file)
    }

    fn validate(&self) -> anyhow::Result<()> {
        range("concurrency", self.concurrency, 1, 1024)?;
        range("lease_secs", self.lease_secs, 3, 3600)?;
        range("git_timeout_secs", self.git_timeout_secs, 1, 86_400)?;
        range("poll_secs", self.poll_secs, 1, 3600)?;
        range("grace_secs", self.grace_secs, 0, 86_400)?;
        range("retention_days", self.retention_days, 1, 3650)?;
        if let Some(listen) = &self.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!("listen {listen:?} is not an address such as \"127.0.0.1:8080\"")
            })?;
        }
        for url in self.webhooks.iter().flatten() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                // The URL itself stays unprinted: webhook URLs carry tokens.
                bail!("webhooks: every URL must start with http:// or https://");
            }
        }
        if let Some(llm) = &self.llm {
            range("llm.timeout_secs", llm.timeout_secs, 1, 3600)?;
        }
        if let Some(defaults) = &self.project_defaults {
            if let Some(agent) = &defaults.agent {
                agent
                    .parse::<damascus_core::AgentKind>()
                    .map_err(|e| anyhow::anyhow!("project_defaults.agent: {e}"))?;
            }
            if defaults
                .agent_model
                .as_deref()
                .is_some_and(|m| m.trim().is_empty() || m.contains(char::is_whitespace))
            {
                bail!("project_defaults.agent_model must be a model name such as \"gpt-5-codex\" (no spaces)");
            }
            if defaults.agent.is_none()
                && (defaults.agent_model.is_some() || defaults.agent_args.is_some())
            {
                bail!("project_defaults: agent_model and agent_args go with an agent; add agent = \"codex\" (or another) beside them");
            }
        }
        if let Some(prices) = self.agent_price_entries() {
            damascus_core::prices::PriceTable::with_overrides(&prices)
                .map_err(|e| anyhow::anyhow!("[agent_prices]: {e}"))?;
        }
        Ok(())
    }

    /// `[agent_prices]` as `MODEL=IN/CACHED/OUT` entries.
    fn agent_price_entries(&self) -> Option<Vec<String>> {
        self.agent_prices.as_ref().map(|p| {
            p.iter()
                .map(|(model, price)| format!("{model}={price}"))
                .collect()
        })
    }

    /// The file's values as `DAMASCUS_*` variables (and `DATABASE_URL`).
    pub fn as_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                env.push((name, value));
            }
        };
        put("DATABASE_URL", self.database_url.clone());
        put("DAMASCUS_DATA_DIR", self.data_dir.clone());
        put("DAMASCUS_LISTEN", self.listen.clone());
        put(
            "DAMASCUS_PUBLIC_METRICS",
            self.public_metrics.map(|b| b.to_string()),
        );
        put(
            "DAMASCUS_CONCURRENCY",
            self.concurrency.map(|v| v.to_string()),
        );
        put(
            "DAMASCUS_LEASE_SECS",
            self.lease_secs.map(|v| v.to_string()),
        );
        put("DAMASCUS_POLL_SECS", self.poll_secs.map(|v| v.to_string()));
        put(
            "DAMASCUS_GRACE_SECS",
            self.grace_secs.map(|v| v.to_string()),
        );
        put("DAMASCUS_GIT_AUTHOR", self.git_author.clone());
        put(
            "DAMASCUS_GIT_TIMEOUT_SECS",
            self.git_timeout_secs.map(|v| v.to_string()),
        );
        put(
            "DAMASCUS_RETENTION_DAYS",
            self.retention_days.map(|v| v.to_string()),
        );
        put(
            "DAMASCUS_WEBHOOKS",
            self.webhooks.as_ref().map(|w| w.join(",")),
        );
        if let Some(defaults) = &self.project_defaults {
            put("DAMASCUS_AGENT", defaults.agent.clone());
            put("DAMASCUS_AGENT_MODEL", defaults.agent_model.clone());
            put(
                "DAMASCUS_AGENT_ARGS",
                defaults
                    .agent_args
                    .as_ref()
                    .map(|a| serde_json::to_string(a).expect("strings are JSON")),
            );
        }
        put(
            "DAMASCUS_AGENT_PRICES",
            self.agent_price_entries().map(|p| p.join(",")),
        );
        if let Some(llm) = &self.llm {
            put("DAMASCUS_LLM_BASE_URL", llm.base_url.clone());
            put("DAMASCUS_LLM_MODEL", llm.model.clone());
            put("DAMASCUS_LLM_API_KEY", llm.api_key.clone());
            put(
                "DAMASCUS_LLM_TIMEOUT_SECS",
                llm.timeout_secs.map(|v| v.to_string()),
            );
            put(
                "DAMASCUS_LLM_PRICES",
                llm.prices.as_ref().map(|p| {
                    p.iter()
                        .map(|(m, v)| format!("{m}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            );
        }
        env
    }
}

/// Removes Damascus's settings (`DAMASCUS_*`, `DATABASE_URL`) that are set but empty, so
/// that an empty variable means what an unset one does: compose files pass `VAR=` for
/// every optional setting the operator left out.
pub fn forget_empty_settings() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty()
                && name
                    .to_str()
                    .is_some_and(|n| n.starts_with("DAMASCUS_") || n == "DATABASE_URL")
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // Before any thread starts: main has not started the runtime yet.
        std::env::remove_var(name);
    }
}

/// Finds `--config PATH` (or `--config=PATH`) in the raw arguments, else
/// `DAMASCUS_CONFIG`, and exports the file's values as environment defaults.
pub fn load_before_parsing() -> anyhow::Result<Option<std::path::PathBuf>> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=").map(str::to_owned).or_else(|| {
            (a == "--config")
                .then(|| args.get(i + 1).cloned())
                .flatten()
        })
    });
    let path = from_args.or_else(|| {
        std::env::var("DAMASCUS_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
    });
    let Some(path) = path else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(path);
    let file = ConfigFile::read(&path)?;
    for (name, value) in file.as_env() {
        if std::env::var_os(name).is_none() {
            // Set before any thread starts: main has not started the runtime yet.
            std::env::set_var(name, value);
        }
    }
    Ok(Some(path))
}
