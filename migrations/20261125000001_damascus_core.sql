-- Damascus's own tables: projects, work items, coordination gates, human issues,
-- the cost ledger and the event outbox. The queue tables (mq_msgs, mq_payloads) come
-- from the sqlxmq migrations before this one.
--
-- Conventions: every closed vocabulary is an enum type (mirrored by damascus-core),
-- every reference is a real foreign key, columns are NOT NULL unless absence means
-- something, and CHECK constraints name the invariant they keep.

create type work_phase as enum ('intake', 'spec', 'build', 'review', 'merged', 'blocked', 'cancelled');
create type verdict_kind as enum ('pass', 'fail', 'needs_human', 'transient_error');
create type forge_kind as enum ('local', 'gitea', 'github');
create type spec_mode as enum ('refine', 'passthrough');
create type human_issue_status as enum ('open', 'answered', 'dismissed');
create type gate_kind as enum ('depends_on', 'approval', 'lock');
create type cost_source as enum ('llm', 'agent');

-- Keeps updated_at honest for changes made from psql as well as from the binary.
create function damascus_touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create table projects (
    id bigint generated always as identity primary key,
    name text not null unique
        constraint projects_name_format check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    repository text not null
        constraint projects_repository_present check (btrim(repository) <> ''),
    default_branch text not null default 'main'
        constraint projects_default_branch_present check (btrim(default_branch) <> ''),
    forge_kind forge_kind not null default 'local',
    forge_repo text
        constraint projects_forge_repo_format check (forge_repo ~ '^[^/[:space:]]+/[^/[:space:]]+$'),
    forge_url text
        constraint projects_forge_url_format check (forge_url ~ '^https?://'),
    test_command text
        constraint projects_test_command_present check (btrim(test_command) <> ''),
    spec_mode spec_mode not null default 'refine',
    max_attempts_per_phase integer not null default 3
        constraint projects_phase_budget_range check (max_attempts_per_phase between 1 and 100),
    max_attempts_total integer not null default 10
        constraint projects_total_budget_range check (max_attempts_total between 1 and 100),
    cost_budget_usd numeric(12, 4)
        constraint projects_cost_budget_non_negative check (cost_budget_usd >= 0),
    context_docs text[] not null default '{}',
    paused boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint projects_forge_repo_required check (forge_kind = 'local' or forge_repo is not null),
    constraint projects_gitea_url_required check (forge_kind <> 'gitea' or forge_url is not null),
    constraint projects_total_covers_phase check (max_attempts_total >= max_attempts_per_phase)
);

create trigger projects_touch_updated_at before update on projects
    for each row execute function damascus_touch_updated_at();

create table work_items (
    id bigint generated always as identity primary key,
    project_id bigint not null references projects (id) on delete restrict,
    title text not null
        constraint work_items_title_present check (btrim(title) <> '' and length(title) <= 200),
    body text not null default '',
    phase work_phase not null default 'spec',
    -- The phase a blocked item resumes in once its human issue is answered.
    resume_phase work_phase
        constraint work_items_resume_phase_working check (resume_phase in ('spec', 'build', 'review')),
    spec jsonb,
    test_command text,
    branch text,
    pr_url text,
    attempts_total integer not null default 0
        constraint work_items_attempts_total_non_negative check (attempts_total >= 0),
    phase_attempts integer not null default 0
        constraint work_items_phase_attempts_non_negative check (phase_attempts >= 0),
    max_attempts_per_phase integer not null
        constraint work_items_phase_budget_range check (max_attempts_per_phase between 1 and 100),
    max_attempts_total integer not null
        constraint work_items_total_budget_range check (max_attempts_total between 1 and 100),
    cost_budget_usd numeric(12, 4)
        constraint work_items_cost_budget_non_negative check (cost_budget_usd >= 0),
    cost_usd numeric(14, 6) not null default 0
        constraint work_items_cost_non_negative check (cost_usd >= 0),
    last_verdict verdict_kind,
    last_verdict_reason text,
    -- Where the story came from: cli, api, mcp, ui, or anything a person typed.
    source text not null default 'cli'
        constraint work_items_source_present check (btrim(source) <> ''),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    phase_entered_at timestamptz not null default now(),
    constraint work_items_blocked_resumes check ((phase = 'blocked') = (resume_phase is not null))
);

-- The API lists items per project and phase; workers and status count live items.
create index work_items_project_phase_idx on work_items (project_id, phase);
create index work_items_live_phase_idx on work_items (phase) where phase not in ('merged', 'cancelled');

create function damascus_work_items_touch() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    if new.phase is distinct from old.phase then
        new.phase_entered_at := now();
    end if;
    return new;
end;
$$;

create trigger work_items_touch before update on work_items
    for each row execute function damascus_work_items_touch();

create table coordination_gates (
    id bigint generated always as identity primary key,
    item_id bigint not null references work_items (id) on delete cascade,
    kind gate_kind not null,
    depends_on_item_id bigint references work_items (id) on delete cascade,
    lock_name text,
    -- NULL while the gate holds the item back.
    opened_at timestamptz,
    opened_by text,
    created_at timestamptz not null default now(),
    constraint coordination_gates_shape check (
        (kind = 'depends_on' and depends_on_item_id is not null and lock_name is null)
        or (kind = 'approval' and depends_on_item_id is null and lock_name is null)
        or (kind = 'lock' and lock_name is not null and btrim(lock_name) <> '' and depends_on_item_id is null)
    ),
    constraint coordination_gates_not_self check (depends_on_item_id <> item_id)
);

create index coordination_gates_closed_idx on coordination_gates (item_id) where opened_at is null;
create index coordination_gates_depends_on_idx on coordination_gates (depends_on_item_id)
    where kind = 'depends_on';

create table human_issues (
    id bigint generated always as identity primary key,
    item_id bigint not null references work_items (id) on delete cascade,
    -- The phase that asked; the item resumes there.
    phase work_phase not null,
    question text not null
        constraint human_issues_question_present check (btrim(question) <> ''),
    context text not null default '',
    status human_issue_status not null default 'open',
    answer text,
    answered_by text,
    created_at timestamptz not null default now(),
    resolved_at timestamptz,
    constraint human_issues_answered_has_answer check ((status = 'answered') = (answer is not null)),
    constraint human_issues_resolved_has_time check ((status = 'open') = (resolved_at is null))
);

-- An item waits on at most one question at a time.
create unique index human_issues_one_open_per_item_idx on human_issues (item_id) where status = 'open';
create index human_issues_open_idx on human_issues (created_at) where status = 'open';

create table cost_ledger (
    id bigint generated always as identity primary key,
    item_id bigint not null references work_items (id) on delete cascade,
    phase work_phase not null
        constraint cost_ledger_working_phase check (phase in ('spec', 'build', 'review')),
    attempt integer not null
        constraint cost_ledger_attempt_positive check (attempt >= 1),
    source cost_source not null,
    model text not null,
    tokens_in bigint not null default 0
        constraint cost_ledger_tokens_in_non_negative check (tokens_in >= 0),
    tokens_out bigint not null default 0
        constraint cost_ledger_tokens_out_non_negative check (tokens_out >= 0),
    usd numeric(14, 6) not null default 0
        constraint cost_ledger_usd_non_negative check (usd >= 0),
    created_at timestamptz not null default now()
);

create index cost_ledger_item_idx on cost_ledger (item_id);
create index cost_ledger_created_idx on cost_ledger (created_at);

create table events_outbox (
    id bigint generated always as identity primary key,
    item_id bigint references work_items (id) on delete cascade,
    project_id bigint references projects (id) on delete cascade,
    -- Dotted lowercase names such as item.ingested or human_issue.answered.
    kind text not null
        constraint events_outbox_kind_format check (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
    payload jsonb not null default '{}'
        constraint events_outbox_payload_object check (jsonb_typeof(payload) = 'object'),
    created_at timestamptz not null default now(),
    delivered_at timestamptz
);

create index events_outbox_item_idx on events_outbox (item_id, id);
create index events_outbox_undelivered_idx on events_outbox (id) where delivered_at is null;

-- For people at a psql prompt: one line per item, with names instead of ids.
create view damascus_items as
select
    i.id,
    p.name as project,
    i.phase,
    i.resume_phase,
    i.title,
    i.attempts_total,
    i.phase_attempts,
    i.cost_usd,
    i.last_verdict,
    i.branch,
    i.pr_url,
    i.created_at,
    i.phase_entered_at,
    (select count(*) from human_issues h where h.item_id = i.id and h.status = 'open') as open_questions
from work_items i
join projects p on p.id = i.project_id;
