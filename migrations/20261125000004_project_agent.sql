-- How a project's phases run: the coding agent's command line (argv; NULL means the
-- default, Claude Code), the time limits of the agent and of the test command, and an
-- optional cap on what all of the project's items may spend per (UTC) day.
alter table projects
    add column daily_cost_budget_usd numeric(12, 4)
        constraint projects_daily_cost_budget_non_negative check (daily_cost_budget_usd >= 0),
    add column agent_command text[]
        constraint projects_agent_command_present check (cardinality(agent_command) >= 1 and btrim(agent_command[1]) <> ''),
    add column agent_timeout_secs integer not null default 1800
        constraint projects_agent_timeout_range check (agent_timeout_secs between 1 and 86400),
    add column test_timeout_secs integer not null default 900
        constraint projects_test_timeout_range check (test_timeout_secs between 1 and 86400);
