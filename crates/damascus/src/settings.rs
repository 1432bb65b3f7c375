//! Turns command-line and environment values into the plain settings the libraries take.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use damascus_core::prices::PriceTable;
use damascus_db::Target;
use damascus_git::Identity;
use damascus_loops::{AgentUser, LlmConfig, LoopsConfig};
use damascus_queue::QueueConfig;

use crate::cli::{DatabaseArgs, LoopsArgs, QueueArgs};

/// The data directory: worktrees, logs and (embedded default) the cluster live here.
pub fn data_dir(args: &DatabaseArgs) -> anyhow::Result<PathBuf> {
    match &args.data_dir {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir.clone()),
        _ => damascus_db::cluster::default_data_dir().context("cannot choose a data directory"),
    }
}

pub fn queue_config(args: &QueueArgs) -> QueueConfig {
    QueueConfig {
        concurrency: args.concurrency,
        lease: Duration::from_secs(args.lease_secs),
        poll_interval: Duration::from_secs(args.poll_secs),
        shutdown_grace: Duration::from_secs(args.grace_secs),
        ..QueueConfig::default()
    }
}

pub fn loops_config(args: &LoopsArgs, data_dir: &Path) -> anyhow::Result<LoopsConfig> {
    let prices = parse_prices(&args.llm_prices)?;
    let llm = match (&args.llm_base_url, &args.llm_model) {
        (None, None) => None,
        (Some(_), None) => bail!("DAMASCUS_LLM_BASE_URL (--llm-base-url) is set but DAMASCUS_LLM_MODEL (--llm-model) is not; name the model to use"),
        (None, Some(_)) => bail!("DAMASCUS_LLM_MODEL (--llm-model) is set but DAMASCUS_LLM_BASE_URL (--llm-base-url) is not; give the endpoint, e.g. http://localhost:4000/v1"),
        (Some(url), Some(model)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("DAMASCUS_LLM_BASE_URL (--llm-base-url) {url:?} must start with http:// or https://");
            }
            Some(LlmConfig {
                base_url: url.clone(),
                api_key: args.llm_api_key.clone().filter(|k| !k.is_empty()),
                model: model.clone(),
                timeout: Duration::from_secs(args.llm_timeout_secs),
                prices,
            })
        }
    };
    Ok(LoopsConfig {
        data_dir: data_dir.to_path_buf(),
        llm,
        identity: parse_identity(&args.git_author)?,
        agent_env: agent_env(&args.agent_env)?,
        claude_max_turns: args.claude_max_turns,
        gitea_token: std::env::var("DAMASCUS_GITEA_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        github_token: std::env::var("DAMASCUS_GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        agent_user: args
            .agent_user
            .as_deref()
            .filter(|name| !name.trim().is_empty())
            .map(|name| AgentUser::lookup(name.trim()))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        git_timeout: Duration::from_secs(args.git_timeout_secs),
        github_write_gap: damascus_loops::GITHUB_WRITE_GAP,
        head_wait: damascus_loops::DEFAULT_HEAD_WAIT,
        prices: agent_prices(&args.agent_prices)?,
    })
}

/// The agents' variables: those some agent needs (each agent gets only its own, see
/// `damascus_loops::agents::env_for`) and the names given with --agent-env, with their
/// values from this process's environment (unset and empty ones are left out: compose
/// passes `VAR=` for a variable the operator did not set).
fn agent_env(extra: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut names: Vec<&str> = damascus_loops::agents::known_env_names();
    for name in extra.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            bail!("--agent-env {name:?} is not a variable name (letters, digits and _, not starting with a digit)");
        }
        let orchestrators =
            name == "DATABASE_URL" || name.starts_with("DAMASCUS_") || name.starts_with("PG");
        if orchestrators {
            bail!("--agent-env {name}: Damascus's own settings (DATABASE_URL, DAMASCUS_*, PG*) never reach the agent; give the agent a variable of its own instead");
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names
        .into_iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_owned(), v))
        })
        .collect())
}

/// The price table agents' tokens are priced with: data/prices.toml and `entries`
/// (`--agent-price`, `DAMASCUS_AGENT_PRICES`, `[agent_prices]`).
pub fn agent_prices(entries: &[String]) -> anyhow::Result<PriceTable> {
    PriceTable::with_overrides(entries).map_err(|e| anyhow::anyhow!("--agent-price: {e}"))
}

/// The price table of this process's environment (`DAMASCUS_AGENT_PRICES`, which the
/// configuration file's `[agent_prices]` sets), for commands without worker flags.
pub fn agent_prices_from_env() -> anyhow::Result<PriceTable> {
    let entries: Vec<String> = std::env::var("DAMASCUS_AGENT_PRICES")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    agent_prices(&entries)
}

fn parse_prices(entries: &[String]) -> anyhow::Result<HashMap<String, (f64, f64)>> {
    let mut prices = HashMap::new();
    for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
        let parsed = entry.split_once('=').and_then(|(model, pair)| {
            let (input, output) = pair.split_once('/')?;
            let input: f64 = input.trim().parse().ok()?;
            let output: f64 = output.trim().parse().ok()?;
            (input >= 0.0 && output >= 0.0 && !model.trim().is_empty())
                .then(|| (model.trim().to_owned(), (input, output)))
        });
        let Some((model, price)) = parsed else {
            bail!("--llm-price {entry:?} is not MODEL=INPUT/OUTPUT in USD per million tokens (e.g. gpt-4o=2.5/10)");
        };
        prices.insert(model, price);
    }
    Ok(prices)
}

fn parse_identity(author: &str) -> anyhow::Result<Identity> {
    let parsed = author.trim().strip_suffix('>').and_then(|rest| {
        let (name, email) = rest.split_once('<')?;
        (!name.trim().is_empty() && email.contains('@')).then(|| Identity {
            name: name.trim().to_owned(),
            email: email.trim().to_owned(),
        })
    });
    parsed.with_context(|| {
        format!("DAMASCUS_GIT_AUTHOR (--git-author) {author:?} is not \"Name <email>\"")
    })
}

pub fn database_target(args: &DatabaseArgs) -> anyhow::Result<Target> {
    match &args.database_url {
        Some(url) if !url.trim().is_empty() => Ok(Target::Url(url.trim().to_owned())),
        _ => Ok(Target::Embedded {
            data_dir: data_dir(args)?,
        }),
    }
}

/// Logs go to stderr so that stdout carries only results.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_env_passes_the_named_variables_that_are_set() {
        // SAFETY: no other test of this binary reads these names.
        unsafe {
            std::env::set_var("DAMASCUS_TEST_AGENT_ENV_SET", "x");
            std::env::set_var("AGENT_ENV_TEST_SET", "yes");
            std::env::remove_var("AGENT_ENV_TEST_UNSET");
        }
        let env = agent_env(&["AGENT_ENV_TEST_SET".into(), "AGENT_ENV_TEST_UNSET".into()]).unwrap();
        assert!(env.contains(&("AGENT_ENV_TEST_SET".into(), "yes".into())));
        assert!(!env.iter().any(|(k, _)| k == "AGENT_ENV_TEST_UNSET"));
        assert!(!env.iter().any(|(k, _)| k.starts_with("DAMASCUS_")));
    }
}
