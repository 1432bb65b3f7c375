//! `damascus agents [--json]`: the coding agents this build can run, whether each is
//! installed on this machine (found on PATH, and its `--version`), the worker
//! variables it gets, and how its spend is capped. Needs no database.

use std::time::Duration;

use damascus_loops::agents::{catalogue, AgentInfo};
use serde::Serialize;

use crate::commands::print_json;
use crate::table;

/// One agent as listed.
#[derive(Debug, Serialize)]
struct Listed {
    agent: &'static str,
    program: Option<&'static str>,
    installed: bool,
    /// The program's path on PATH.
    path: Option<String>,
    /// The first line of `PROGRAM --version`.
    version: Option<String>,
    install: &'static str,
    env: &'static [&'static str],
    /// `agent` (it stops itself at the reservation it is told) or `damascus` (it is
    /// stopped when the usage it streams reaches the reservation).
    budget_capped_by: &'static str,
    /// `reported` (the agent's dollars), `price table` (its tokens priced), or, for a
    /// command, whichever its result gives.
    spend: &'static str,
}

/// How long one `--version` may take (a Node CLI starts in a second or two).
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

async fn version(path: &std::path::Path) -> Option<String> {
    let run = tokio::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

async fn listed(info: AgentInfo) -> Listed {
    let path = info.program.and_then(on_path);
    let version = match &path {
        Some(path) => version(path).await,
        None => None,
    };
    Listed {
        agent: info.kind.as_str(),
        program: info.program,
        installed: info.program.is_none() || path.is_some(),
        path: path.map(|p| p.display().to_string()),
        version,
        install: info.install_hint,
        env: info.env_names,
        budget_capped_by: if info.caps_its_own_budget {
            "agent"
        } else {
            "damascus"
        },
        spend: match (info.kind, info.priced_by_damascus) {
            (damascus_core::AgentKind::Command, _) => "its result: dollars, or tokens priced",
            (_, true) => "price table",
            (_, false) => "reported",
        },
    }
}

pub async fn list(json: bool) -> anyhow::Result<()> {
    // Each --version in parallel: a Node CLI takes a second or two to start.
    let running: Vec<_> = catalogue()
        .into_iter()
        .map(|info| tokio::spawn(listed(info)))
        .collect();
    let mut all = Vec::new();
    for task in running {
        all.push(task.await?);
    }
    if json {
        return print_json(&all);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|a| {
            vec![
                a.agent.to_owned(),
                match (a.program, &a.version) {
                    (None, _) => "(your --agent-command)".to_owned(),
                    (Some(_), Some(v)) => v.clone(),
                    (Some(_), None) if a.installed => "installed (no version)".to_owned(),
                    (Some(_), None) => format!("not installed: {}", a.install),
                },
                a.budget_capped_by.to_owned(),
                a.spend.to_owned(),
                if a.env.is_empty() {
                    "every agent's above, and --agent-env's".to_owned()
                } else {
                    a.env.join(", ")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "AGENT",
                "INSTALLED",
                "BUDGET CAPPED BY",
                "SPEND",
                "VARIABLES"
            ],
            &rows
        )
    );
    Ok(())
}
