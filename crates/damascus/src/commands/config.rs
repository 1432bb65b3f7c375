//! `damascus config check`: validates every setting `damascus run` would use (file,
//! environment, flags) and prints the effective values with secrets masked.

use std::path::Path;

use anyhow::bail;
use damascus_db::connect::redact_url;
use damascus_db::Target;

use crate::cli::RunArgs;
use crate::settings;

/// Keeps a webhook URL's scheme and host: paths and queries often carry tokens.
fn mask_webhook(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}/***")
        }
        None => "***".into(),
    }
}

pub fn validate_webhooks(webhooks: &[String]) -> anyhow::Result<()> {
    for url in webhooks.iter().filter(|u| !u.is_empty()) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "DAMASCUS_WEBHOOKS (--webhook) {} must start with http:// or https://",
                mask_webhook(url)
            );
        }
    }
    Ok(())
}

pub fn check(
    target: &Target,
    data_dir: &Path,
    config: Option<&Path>,
    args: RunArgs,
) -> anyhow::Result<()> {
    let loops = settings::loops_config(&args.loops, data_dir)?;
    let queue = settings::queue_config(&args.queue);
    validate_webhooks(&args.webhooks)?;
    let database = match target {
        Target::Url(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("DATABASE_URL must start with postgresql:// or postgres://");
            }
            redact_url(url)
        }
        Target::Embedded { data_dir } => format!("embedded cluster under {}", data_dir.display()),
    };
    let show = |key: &str, value: String| println!("{key:<16} {value}");
    show(
        "config file",
        config
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into()),
    );
    show("database", database);
    show("data_dir", data_dir.display().to_string());
    show("listen", args.serve.listen.to_string());
    show("public_metrics", args.serve.public_metrics.to_string());
    show("public_health", (!args.serve.private_health).to_string());
    show(
        "concurrency",
        queue
            .concurrency
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(the cap in force)".into()),
    );
    show("lease_secs", queue.lease.as_secs().to_string());
    show("poll_secs", queue.poll_interval.as_secs().to_string());
    show("grace_secs", queue.shutdown_grace.as_secs().to_string());
    show("no_migrate", args.no_migrate.to_string());
    match &loops.llm {
        Some(llm) => {
            show("llm.base_url", llm.base_url.clone());
            show("llm.model", llm.model.clone());
            show(
                "llm.api_key",
                if llm.api_key.is_some() {
                    "*** (set)".into()
                } else {
                    "(not set)".into()
                },
            );
            show("llm.timeout_secs", llm.timeout.as_secs().to_string());
            show("llm.prices", format!("{} models", llm.prices.len()));
        }
        None => show(
            "llm",
            "(not configured: refine-mode specs wait for a person)".into(),
        ),
    }
    show(
        "git_author",
        format!("{} <{}>", loops.identity.name, loops.identity.email),
    );
    show("git_timeout_secs", loops.git_timeout.as_secs().to_string());
    let agent_env: Vec<&str> = loops.agent_env.iter().map(|(k, _)| k.as_str()).collect();
    show(
        "agent env",
        if agent_env.is_empty() {
            "(none)".into()
        } else {
            format!("{} (values masked)", agent_env.join(", "))
        },
    );
    let overridden = loops.prices.overridden();
    show(
        "agent_prices",
        format!(
            "{} models (data/prices.toml{})",
            loops.prices.models().len(),
            if overridden.is_empty() {
                String::new()
            } else {
                format!("; --agent-price: {}", overridden.join(", "))
            }
        ),
    );
    let defaults =
        damascus_api::project_add::AgentDefaults::from_env().map_err(anyhow::Error::msg)?;
    show(
        "project_defaults",
        match defaults.agent {
            None => "(none: a project without --agent runs claude)".into(),
            Some(agent) => format!(
                "agent {agent}{}{}",
                defaults
                    .model
                    .map(|m| format!(", model {m}"))
                    .unwrap_or_default(),
                if defaults.args.is_empty() {
                    String::new()
                } else {
                    format!(", args {:?}", defaults.args)
                }
            ),
        },
    );
    let hooks: Vec<String> = args
        .webhooks
        .iter()
        .filter(|u| !u.is_empty())
        .map(|u| mask_webhook(u))
        .collect();
    show(
        "webhooks",
        if hooks.is_empty() {
            "(none)".into()
        } else {
            hooks.join(", ")
        },
    );
    show("retention_days", args.retention_days.to_string());
    Ok(())
}
