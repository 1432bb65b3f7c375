//! `damascus project add|list` (`list --json`: `damascus_api::json::ProjectJson`).

use damascus_api::json::ProjectJson;
use damascus_core::{NewProject, ProjectName};
use damascus_db::{projects, Target};

use crate::cli::ProjectAddArgs;
use crate::commands::{open_migrated, print_json};
use crate::table;

pub async fn add(target: &Target, args: ProjectAddArgs) -> anyhow::Result<()> {
    let agent_command = args
        .agent_command
        .as_deref()
        .map(|line| {
            shell_words::split(line).map_err(|e| {
                anyhow::anyhow!("--agent-command {line:?} cannot be split into arguments ({e}); check its quotes")
            })
        })
        .transpose()?;
    // --agent-command alone means the command agent; without either, the
    // deployment's [project_defaults].
    let defaults =
        damascus_api::project_add::AgentDefaults::from_env().map_err(anyhow::Error::msg)?;
    let (agent, agent_model, agent_args) = defaults.apply(
        args.agent,
        args.agent_model,
        args.agent_args,
        agent_command.as_ref(),
    );
    let project = NewProject {
        name: ProjectName::parse(&args.name)?,
        repository: args.repo,
        default_branch: args.default_branch,
        forge_kind: args.forge,
        forge_repo: args.forge_repo,
        forge_url: args.forge_url,
        test_command: args.test_command,
        spec_mode: args.spec_mode,
        max_attempts_per_phase: args.max_attempts_per_phase,
        max_attempts_total: args.max_attempts_total,
        cost_budget_usd: args.cost_budget_usd,
        context_docs: args.context_docs,
        agent,
        agent_model,
        agent_args,
        agent_command,
        agent_timeout_secs: args.agent_timeout_secs,
        test_timeout_secs: args.test_timeout_secs,
        daily_cost_budget_usd: args.daily_cost_budget_usd,
        merge_method: args.merge_method,
        require_approval: args.require_approval,
        merge_batch_size: args.merge_batch_size,
        branch_update: args.branch_update,
        sandbox: args.sandbox,
        rounds_per_answer: args.rounds_per_answer,
    };
    project.validate()?;
    project.check_price(&crate::settings::agent_prices_from_env()?)?;
    let db = open_migrated(target).await?;
    let added = projects::add_project(&db.pool, &project).await?;
    println!(
        "added project {} ({}, forge {})",
        added.name, added.repository, added.forge_kind
    );
    Ok(())
}

pub async fn list(target: &Target, json: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let summaries = projects::list_projects(&db.pool).await?;
    if json {
        let shown: Vec<ProjectJson> = summaries.into_iter().map(ProjectJson::from).collect();
        return print_json(&shown);
    }
    if summaries.is_empty() {
        println!("no projects yet; add one with: damascus project add NAME --repo URL");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let p = &s.project;
            vec![
                p.name.clone(),
                p.forge_kind.to_string(),
                p.default_branch.clone(),
                format!("{}/{}", s.items_live, s.items_total),
                if p.paused {
                    "paused".into()
                } else {
                    "active".into()
                },
                p.repository.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["NAME", "FORGE", "BRANCH", "LIVE/ALL", "STATE", "REPOSITORY"],
            &rows
        )
    );
    Ok(())
}
