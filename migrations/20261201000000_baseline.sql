-- The whole schema of Damascus: every extension, type, table, index, function, trigger
-- and view it uses, and the rows a new database starts with.
--
-- The job queue is Damascus's own: one damascus_jobs row per job (its item, phase,
-- attempt, when it may run and its runs), one damascus_slots row per phase that may run
-- at once (the global cap, the lease and the claim that holds a job), and the functions
-- below that spawn, claim, keep alive and end jobs. damascus_queue shows each job with
-- its state and holder in one row.
--
-- Conventions of Damascus's own tables: every closed vocabulary is an enum type
-- (mirrored by damascus-core), every reference is a real foreign key, columns are NOT
-- NULL unless absence means something, and CHECK constraints name the invariant they
-- keep. See docs/QUEUE.md for the queue's design and docs/STATE_MACHINE.md for the job
-- states.

-- ===================================================================================
-- Types
-- ===================================================================================

create type work_phase as enum ('intake', 'spec', 'build', 'review', 'merged', 'blocked', 'cancelled');
create type verdict_kind as enum ('pass', 'fail', 'needs_human', 'transient_error');
create type forge_kind as enum ('local', 'gitea', 'github');
create type spec_mode as enum ('refine', 'passthrough');
create type human_issue_status as enum ('open', 'answered', 'dismissed');
create type gate_kind as enum ('depends_on', 'approval', 'lock');
create type cost_source as enum ('llm', 'agent');
create type merge_queue_state as enum ('waiting', 'updating', 'testing', 'merging');
create type webhook_delivery_state as enum ('pending', 'retrying', 'delivered', 'dead');

-- ===================================================================================
-- Tables, each with its indexes
-- ===================================================================================

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
    -- A paused project's items get no new jobs (running phases finish). Resuming the
    -- project touches its working items, and the spawn trigger spawns their jobs.
    paused boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- How a project's phases run: an optional cap on what all of the project's items
    -- may spend per (UTC) day, the coding agent's command line (argv; NULL means the
    -- default, Claude Code), and the time limits of the agent and of the test command.
    daily_cost_budget_usd numeric(12, 4)
        constraint projects_daily_cost_budget_non_negative check (daily_cost_budget_usd >= 0),
    agent_command text[]
        constraint projects_agent_command_present check (cardinality(agent_command) >= 1 and btrim(agent_command[1]) <> ''),
    agent_timeout_secs integer not null default 1800
        constraint projects_agent_timeout_range check (agent_timeout_secs between 1 and 86400),
    test_timeout_secs integer not null default 900
        constraint projects_test_timeout_range check (test_timeout_secs between 1 and 86400),
    -- How the forge merges a project's pull requests (Gitea's `Do`, GitHub's
    -- `merge_method`); the local forge always makes a merge commit.
    merge_method text not null default 'merge'
        constraint projects_merge_method_known check (merge_method in ('merge', 'squash', 'rebase')),
    -- A person approves the spec before build (an approval gate).
    require_approval boolean not null default false,
    -- The merge queue: how many queued items a head tests and merges together, and how
    -- it brings its branch up to date with the base branch.
    merge_batch_size integer not null default 4
        constraint projects_merge_batch_size_range check (merge_batch_size between 1 and 32),
    branch_update text not null default 'merge'
        constraint projects_branch_update_known check (branch_update in ('merge', 'rebase')),
    -- How many full rounds (from the phase an answer resumes in to merged) each answer
    -- grants at the least in total attempts.
    rounds_per_answer integer not null default 1
        constraint projects_rounds_per_answer_range check (rounds_per_answer between 1 and 10),
    -- Where a project's agent and tests run: as the worker's processes with an
    -- allow-listed environment (none), or in a bubblewrap namespace where only their
    -- worktree and HOME are writable and the data directory is hidden (bwrap).
    sandbox text not null default 'none'
        constraint projects_sandbox_known check (sandbox in ('none', 'bwrap')),
    constraint projects_forge_repo_required check (forge_kind = 'local' or forge_repo is not null),
    constraint projects_gitea_url_required check (forge_kind <> 'gitea' or forge_url is not null),
    constraint projects_total_covers_phase check (max_attempts_total >= max_attempts_per_phase)
);

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

-- Coordination gates hold an item back until they open:
--   depends_on  the other item is merged (opened by the merge itself);
--   approval    a person approves the spec before build (projects.require_approval);
--   lock        the item holds the named lock (see named_locks).
-- A closed depends_on gate holds every phase; a closed approval gate holds build; a
-- lock gate holds review. Opening a depends_on or approval gate touches its item, so the
-- spawn trigger gives it its job at once. (Merges of one repository are serialised by an
-- advisory lock in the reviewer.)
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

create index coordination_gates_depends_on_idx on coordination_gates (depends_on_item_id)
    where kind = 'depends_on';
-- Finding an item's gates (releasing its locks, listing them, the cascade when an
-- item is deleted) reads this index instead of the whole table.
create index coordination_gates_item_idx on coordination_gates (item_id);
create index coordination_gates_lock_name_idx on coordination_gates (lock_name)
    where kind = 'lock';
-- The waiters of a lock, by its name (damascus_lock_waiters). Every item that enters
-- review inserts a closed lock gate for its queue and opens it at once when it takes the
-- lock, so an index of closed gates by item fills with dead entries between vacuums,
-- and a lookup of the waiters through it reads them all (the bench's review jobs cost
-- twice as much at 20,000 queued as at 2,000). By name, a lookup reads only that lock's
-- entries. There is deliberately no partial index of closed gates by item:
-- coordination_gates_item_idx serves the lookups by item, and with two partial indexes
-- on "opened_at is null" the planner takes the one by item for the lookup by name,
-- since after an analyze both look empty.
create index coordination_gates_lock_waiters_idx on coordination_gates (lock_name)
    where kind = 'lock' and opened_at is null;

create table human_issues (
    id bigint generated always as identity primary key,
    item_id bigint not null references work_items (id) on delete cascade,
    -- The phase that asked, which the item left; `damascus item retry` re-runs it as
    -- it is.
    phase work_phase not null,
    question text not null
        constraint human_issues_question_present check (btrim(question) <> ''),
    context text not null default '',
    status human_issue_status not null default 'open',
    answer text,
    answered_by text,
    created_at timestamptz not null default now(),
    resolved_at timestamptz,
    -- Where an answer resumes the item follows from why it stopped (damascus-core's
    -- `on_answer`), decided when the question is asked and kept with it: a failed build
    -- or review is rebuilt with the answer as guidance, anything else resumes the phase
    -- it left. A question inserted without it (from psql, say) resumes where the item
    -- left (damascus_human_issue_on_answer).
    on_answer work_phase not null,
    constraint human_issues_answered_has_answer check ((status = 'answered') = (answer is not null)),
    constraint human_issues_resolved_has_time check ((status = 'open') = (resolved_at is null)),
    constraint human_issues_on_answer_working check (on_answer in ('spec', 'build', 'review'))
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

-- The event outbox. A stream of events has no gaps: event ids are taken at insert, not
-- at commit, so a reader that followed `id > last` would skip an event whose
-- transaction commits after a higher id was read. Each event therefore carries the id of
-- the transaction that wrote it; readers hand out only events whose transaction is older
-- than every transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`), in
-- (txid, id) order. No event can appear later below that line, so a cursor at the last
-- event handed out misses nothing. Nothing NOTIFYs per event: the API's event streams
-- read the outbox by id every 250 ms, and a NOTIFY per event would make every
-- transaction that writes an event take PostgreSQL's cluster-wide notification lock
-- through its commit, serialising those commits (and their WAL flushes) across all
-- sessions.
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
    txid xid8 not null default pg_current_xact_id()
);

create index events_outbox_item_idx on events_outbox (item_id, id);
create index events_outbox_txid_idx on events_outbox (txid, id);

comment on column events_outbox.txid is
    'The transaction that wrote the event: streams read in (txid, id) order, up to the oldest transaction still running.';

-- Bearer tokens for the HTTP API. A token is `dmsc_<id>_<secret>`: the id finds the row,
-- and the secret is compared, in constant time, with the SHA-256 stored here. The
-- secret itself is shown once, when the token is created, and never stored.
create table api_tokens (
    id bigint generated always as identity primary key,
    name text not null unique
        constraint api_tokens_name_format check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    secret_sha256 bytea not null
        constraint api_tokens_hash_length check (length(secret_sha256) = 32),
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- The queue engine: which item and phase each job advances,
-- a global cap on running phases (slots), worker processes with heartbeats, leases,
-- and the trigger that spawns an item's job in the same transaction as the change that
-- made it runnable.

-- One row: the global number of phases that may run at once, across every worker
-- process on this database. `damascus worker --concurrency N` sets it.
create table damascus_queue_settings (
    singleton boolean primary key default true
        constraint damascus_queue_settings_one_row check (singleton),
    concurrency integer not null default 4
        constraint damascus_queue_settings_concurrency_range check (concurrency between 1 and 1024),
    job_attempts integer not null default 5
        constraint damascus_queue_settings_job_attempts_range check (job_attempts between 1 and 100),
    updated_at timestamptz not null default now()
);

create table damascus_worker_processes (
    id bigint generated always as identity primary key,
    host text not null,
    pid integer not null,
    concurrency integer not null,
    -- The worker's lease length: the reaper judges it silent after four of them.
    lease_ms bigint not null default 30000
        constraint damascus_worker_processes_lease_positive check (lease_ms > 0),
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stopping boolean not null default false
);

-- The global cap: one row per phase that may run at once. A running job holds a slot
-- until it finishes or its lease runs out; an expired lease frees the slot (its holder
-- died) and its job becomes claimable again, since the job's run_at passed too.
--
-- Slot rows change on every claim and every end of a claim. With no index on a column
-- that changes (job_id, claim_token), each change is a HOT update inside the slot
-- table's few pages: no index entry written, none left behind to vacuum. The table
-- holds one row per slot of the cap, so finding a claim or a job by scanning it costs
-- less than keeping an index. That a job or a claim token is held by one slot at most
-- is true by construction: damascus_claim takes slots and job rows FOR UPDATE SKIP
-- LOCKED and mints each token with gen_random_uuid(). job_id has no foreign key: every
-- path that deletes a job row frees its slot first (damascus_delete_job,
-- damascus_end_group) or only deletes rows no slot names (pausing
-- a project); a slot naming a vanished job is reclaimed when its lease ends.
create table damascus_slots (
    slot integer primary key
        constraint damascus_slots_positive check (slot >= 1),
    job_id uuid,
    worker_id bigint references damascus_worker_processes (id) on delete set null,
    -- Names one claim: every end of a claim and every keep-alive is fenced on it, so a
    -- worker's stale run of a job it claimed again cannot pass for the new one.
    claim_token uuid,
    claimed_at timestamptz,
    lease_until timestamptz
);

-- One row per job: which item, phase and attempt it advances and where it stands in
-- the queue. One job per item at most: the unique key makes "exactly one job per
-- runnable item" a database fact. A job is ready when run_at has passed and it has
-- runs left (runs < max_runs). A claim starts a run (runs + 1) and moves run_at to the
-- end of its lease, which keep-alives push on: a job whose holder died is ready again
-- when the lease runs out, and one with no runs left is dead, and the reaper blocks
-- its item. A retry moves run_at by its backoff; a release gives the run back. Which
-- worker holds it is its slot's business; damascus_queue shows both in one row.
create table damascus_jobs (
    job_id uuid primary key default gen_random_uuid(),
    item_id bigint not null unique references work_items (id) on delete cascade,
    phase work_phase not null
        constraint damascus_jobs_working_phase check (phase in ('spec', 'build', 'review')),
    attempt integer not null
        constraint damascus_jobs_attempt_positive check (attempt >= 1),
    -- When it may run next: at once, after a retry's backoff, or, while claimed, when
    -- its lease ends.
    run_at timestamptz not null default now(),
    -- How often the job was claimed: its runs, including one going on now.
    runs integer not null default 0
        constraint damascus_jobs_runs_non_negative check (runs >= 0),
    -- How many runs it may have (the queue's job_attempts when it was spawned).
    max_runs integer not null
        constraint damascus_jobs_max_runs_positive check (max_runs >= 1),
    last_error text,
    created_at timestamptz not null default now()
);

-- The claim's read: ready jobs in run_at order, from one index range.
create index damascus_jobs_ready_idx on damascus_jobs (run_at) where runs < max_runs;
-- The reaper's read: jobs with no runs left.
create index damascus_jobs_spent_idx on damascus_jobs (run_at) where runs >= max_runs;

-- Named locks: a `lock` gate is a named mutex an item must hold to run its review
-- phase (its tests and its merge). Items that share a lock name never review, and so
-- never merge, at the same time; items without it are not held back.
--
-- An item takes its locks when it enters review (in the spawn trigger, so in the
-- transaction that moved it there), its merge queue's lock first and then the others in
-- name order, stopping at the first lock another item holds: two items can never wait
-- for each other. It holds them until it leaves review in any direction (merged, failed
-- back to build, blocked, cancelled), in the transaction that moved it. Releasing a lock
-- hands it to the item that has waited longest for it, in the same transaction, and that
-- item's job is spawned there; a waiter whose row is busy at that instant gets it
-- through the workers' respawn pass, woken on the damascus_respawn channel. A paused
-- project's items keep the locks they hold until they leave review.
--
-- The holder of a name is one row of named_locks: its primary key is the mutex. An
-- insert ... on conflict do nothing from two transactions at once makes the second wait
-- for the first and then see its row, so two holders can never commit.
create table named_locks (
    name text primary key
        constraint named_locks_name_present check (btrim(name) <> ''),
    item_id bigint not null references work_items (id) on delete cascade,
    acquired_at timestamptz not null default now()
);

create index named_locks_item_idx on named_locks (item_id);

-- The merge queue: one queue per repository and base branch. An item whose build
-- passed enters its queue when it enters review; it leaves when it leaves review (merged,
-- sent back to build, blocked, cancelled), in the transaction that moved it.
--
-- The queue's head is the one item of the queue that runs: every queued item has a
-- `lock` gate on the queue's implicit lock, named 'merge-queue <repository> <branch>'
-- (a space, which user lock names cannot hold, keeps the two apart), and the named-lock
-- machinery does the rest: the spawn trigger takes the lock when the item enters
-- review, the item that leaves review hands it to the item that has waited longest
-- (phase_entered_at order, which is the queue's order), and a waiter whose row was busy
-- gets it through the respawn pass. The head's review job brings its branch up to date,
-- tests the commit that will become the base branch (together with up to batch_size - 1
-- followers) and merges it; followers of a batch are recorded in the head's transaction.
create table merge_queue (
    item_id bigint primary key references work_items (id) on delete cascade,
    -- The queue: the item's project's repository and default branch at entry.
    repository text not null,
    base_branch text not null,
    lock_name text not null,
    -- The queue's order (the item's phase_entered_at when it entered review).
    entered_at timestamptz not null,
    state merge_queue_state not null default 'waiting',
    state_since timestamptz not null default now(),
    -- The head whose batch this item is tested in (the head names itself).
    batch_head bigint references work_items (id) on delete set null,
    -- The commit under test or being merged, when there is one.
    tested_commit text
);

create index merge_queue_order_idx on merge_queue (lock_name, entered_at, item_id);
create index merge_queue_batch_head_idx on merge_queue (batch_head) where batch_head is not null;

-- Spend caps that hold under concurrency. A model or agent call first reserves budget:
-- the item's budget and its project's daily budget are checked against what is spent
-- *and* what running calls hold, under a row lock on the project, so concurrent calls of
-- one project cannot all pass the check and overspend together. A reservation belongs
-- to one claim of a job: it holds while that claim holds its slot, and lapses in the
-- same transaction that ends the claim and records the real cost (the slot's claim token
-- changes), so settling needs no write of its own and a dead worker's reservations lapse
-- with its lease.
create table budget_reservations (
    id bigint generated always as identity primary key,
    claim_token uuid not null,
    item_id bigint not null references work_items (id) on delete cascade,
    project_id bigint not null references projects (id) on delete cascade,
    usd numeric(14, 6) not null,
    created_at timestamptz not null default now(),
    constraint budget_reservations_usd_positive check (usd > 0)
);

create index budget_reservations_project_idx on budget_reservations (project_id);
create index budget_reservations_item_idx on budget_reservations (item_id);

comment on table budget_reservations is
    'Budget held by running model and agent calls; live while its claim_token holds a slot in damascus_slots.';

-- The process groups a running phase started (its agent, its tests), so that a worker
-- starting on the same host can kill what a dead worker left behind. A row lives while
-- its process runs; one whose claim's lease ran out is an orphan.
create table damascus_job_processes (
    process_group integer not null,
    host text not null,
    claim_token uuid not null,
    item_id bigint not null,
    -- The group leader's start time in clock ticks since boot (/proc/PID/stat field 22):
    -- a process group id reused by an unrelated process is told apart by it.
    leader_start_ticks bigint not null,
    started_at timestamptz not null default now(),
    primary key (host, process_group)
);

comment on table damascus_job_processes is
    'Process groups of running phases (agents, tests) per host; a row whose claim''s lease ran out is an orphan to kill.';

-- Webhooks are data: every process delivers to the same registered set, each (event,
-- webhook) pair has a delivery state of its own, so a webhook that is down delays only
-- itself, and what may be pruned is decided here, not by each process.
create table webhooks (
    id bigint generated always as identity primary key,
    name text not null unique
        constraint webhooks_name_shape check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    url text not null
        constraint webhooks_url_http check (url ~ '^https?://'),
    -- Standard Webhooks signing secret: whsec_ and the base64 of the key.
    secret text not null
        constraint webhooks_secret_shape check (secret ~ '^whsec_[A-Za-z0-9+/=]+$'),
    -- The event kinds it receives; null: every kind.
    event_kinds text[],
    max_attempts integer not null default 10
        constraint webhooks_max_attempts_range check (max_attempts between 1 and 100),
    created_at timestamptz not null default now()
);

comment on table webhooks is
    'Where events are delivered (signed, Standard Webhooks); damascus webhook add|list|remove|test|redrive.';

create table webhook_deliveries (
    webhook_id bigint not null references webhooks (id) on delete cascade,
    event_id bigint not null references events_outbox (id) on delete cascade,
    state webhook_delivery_state not null default 'pending',
    attempts integer not null default 0
        constraint webhook_deliveries_attempts_non_negative check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    last_status integer,
    last_error text,
    updated_at timestamptz not null default now(),
    primary key (webhook_id, event_id)
);

-- What each webhook still has to send, in the order it sends it.
create index webhook_deliveries_undelivered_idx on webhook_deliveries (webhook_id, event_id)
    where state in ('pending', 'retrying');
create index webhook_deliveries_event_idx on webhook_deliveries (event_id);

comment on table webhook_deliveries is
    'One row per (webhook, event): pending, retrying (attempts, next_attempt_at, last_status, last_error), delivered or dead.';

-- ===================================================================================
-- Functions and triggers: timestamps and defaults
-- ===================================================================================

-- Keeps updated_at honest for changes made from psql as well as from the binary.
create function damascus_touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create trigger projects_touch_updated_at before update on projects
    for each row execute function damascus_touch_updated_at();

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

-- A question inserted without on_answer (from psql, say) resumes where the item left.
create function damascus_human_issue_on_answer() returns trigger
language plpgsql as $$
begin
    new.on_answer := coalesce(new.on_answer, new.phase);
    return new;
end;
$$;

create trigger human_issues_on_answer before insert on human_issues
    for each row execute function damascus_human_issue_on_answer();

-- ===================================================================================
-- Functions and triggers: spawning jobs, gates, named locks, the merge queue
-- ===================================================================================

-- The channel that wakes idle workers: a spawned job and a freed slot notify it.
create function damascus_job_channel() returns text
language sql immutable as $$ select 'damascus_jobs'::text $$;

-- Whether a gate other than a lock holds the item back in this phase. A closed
-- depends_on gate holds every phase; a closed approval gate holds build. The spawn
-- trigger and the reaper's safety net both ask this one function.
create function damascus_gates_hold(p_item bigint, p_phase work_phase) returns boolean
language sql stable as $$
    select exists (
        select 1 from coordination_gates g
        where g.item_id = p_item and g.opened_at is null
          and (g.kind = 'depends_on' or (g.kind = 'approval' and p_phase = 'build'))
    )
$$;

-- Whether an item in p_phase may have a job now: the one rule for what may run. Its
-- phase is a working one, its project is not paused, and no gate but a lock holds it
-- (damascus_gates_hold). A lock is not checked here but taken: the spawn trigger takes
-- an item's locks when it enters review (damascus_take_locks), and a lock another item
-- holds spawns nothing until its release hands it over. The spawn trigger, the
-- respawn pass, retry_later, a project's resume and the merge queue's batch ask this
-- function.
create function damascus_may_run(p_item bigint, p_phase work_phase, p_project bigint)
returns boolean
language sql stable as $$
    select p_phase in ('spec', 'build', 'review')
       and not exists (select 1 from projects p where p.id = p_project and p.paused)
       and not damascus_gates_hold(p_item, p_phase)
$$;

-- Asks for items to be looked at again: the one way to have the spawn trigger decide
-- anew whether each may run and, if it may and has no job, give it its job (it fires
-- on a change of updated_at). Used when something outside the item changed what the
-- rule says: a gate opened, a lock handed over, a project resumed, a job dropped, the
-- respawn pass. Returns how many items it touched.
create function damascus_look_again(p_items bigint[]) returns integer
language plpgsql as $$
declare
    v_touched integer;
begin
    update work_items set updated_at = now() where id = any (p_items);
    get diagnostics v_touched = row_count;
    return v_touched;
end;
$$;

-- Whether another item holds one of this item's locks (the reaper's filter: touching
-- such an item would spawn nothing).
create function damascus_locks_taken_by_others(p_item bigint) returns boolean
language sql stable as $$
    select exists (
        select 1 from coordination_gates g
        join named_locks l on l.name = g.lock_name
        where g.item_id = p_item and g.kind = 'lock' and l.item_id <> p_item
    )
$$;

-- Takes the item's locks and says whether it holds them all: the merge queue's lock
-- first, then the others in name order. An item that waits for its queue then holds
-- none of its own named locks meanwhile (it would hold them for as long as the queue
-- ahead of it takes); one at the head may wait for a named lock that an item of another
-- repository holds, which ends when that item leaves review. It stops at the first lock
-- another item holds; the locks taken before it stay held (ordered acquisition, in one
-- total order, cannot deadlock), and the release of that lock hands it over.
create function damascus_take_locks(p_item bigint) returns boolean
language plpgsql as $$
declare
    v_gate record;
begin
    for v_gate in
        select g.id, g.lock_name from coordination_gates g
        where g.item_id = p_item and g.kind = 'lock'
        order by (g.lock_name like 'merge-queue %') desc, g.lock_name
    loop
        loop
            insert into named_locks (name, item_id) values (v_gate.lock_name, p_item)
            on conflict (name) do nothing;
            exit when exists (
                select 1 from named_locks where name = v_gate.lock_name and item_id = p_item
            );
            perform 1 from named_locks where name = v_gate.lock_name for key share;
            if found then
                return false;
            end if;
        end loop;
        update coordination_gates set opened_at = now(), opened_by = 'holds the lock'
        where id = v_gate.id and opened_at is null;
    end loop;
    return true;
end;
$$;

-- Spawns the job of an item in a working phase that has none, in the transaction that
-- made it runnable: an insert from the binary, an UPDATE typed into psql, an answer,
-- a gate opening, a lock handed over. Its NOTIFY wakes idle workers at commit. Nothing is spawned for an item of a paused project or one a gate
-- holds back; entering review takes the item's named locks, and a lock another item
-- holds spawns nothing.
create function damascus_spawn_job() returns trigger
language plpgsql as $$
declare
    v_attempts integer;
begin
    if exists (select 1 from damascus_jobs where item_id = new.id) then
        return null;
    end if;
    -- A paused project's row is share-locked: a resume committing right now waits for
    -- this transaction, and its look at the project's items then sees this one.
    perform 1 from projects where id = new.project_id and paused for share;
    if not damascus_may_run(new.id, new.phase, new.project_id) then
        return null;
    end if;
    if new.phase = 'review' and not damascus_take_locks(new.id) then
        return null;
    end if;
    select job_attempts into v_attempts from damascus_queue_settings;
    insert into damascus_jobs (item_id, phase, attempt, max_runs)
    values (new.id, new.phase, new.phase_attempts + 1, v_attempts);
    perform pg_notify(damascus_job_channel(), '');
    return null;
end;
$$;

-- Only changes that can make an item runnable fire it: its phase or attempt counter
-- (a verdict, an answer, an UPDATE in psql), or a deliberate touch of updated_at (the
-- reaper's safety net, an opened gate, a lock handed over). A change of cost or title
-- alone never spawns a job.
-- It fires only for a working phase: a move to merged, blocked or cancelled (most of
-- the moves that are not a spawn) costs no call.
create trigger work_items_spawn_job after insert or update of phase, phase_attempts, resume_phase, updated_at
    on work_items
    for each row when (new.phase in ('spec', 'build', 'review'))
    execute function damascus_spawn_job();

-- A merge opens the depends_on gates that wait for it, in the merge's transaction.
create function damascus_open_dependents() returns trigger
language plpgsql as $$
begin
    update coordination_gates set opened_at = now(), opened_by = 'merge of item ' || new.id
    where kind = 'depends_on' and depends_on_item_id = new.id and opened_at is null;
    return null;
end;
$$;

create trigger work_items_open_dependents after update of phase on work_items
    for each row when (new.phase = 'merged' and old.phase is distinct from 'merged')
    execute function damascus_open_dependents();

-- An opened gate touches its item: the spawn trigger decides if it may run now.
create function damascus_gate_opened() returns trigger
language plpgsql as $$
begin
    perform damascus_look_again(array[new.item_id]);
    return null;
end;
$$;

-- Opening a lock gate is the spawn trigger's own doing; only other gates touch the item.
create trigger coordination_gates_opened after update of opened_at on coordination_gates
    for each row when (old.opened_at is null and new.opened_at is not null and new.kind <> 'lock')
    execute function damascus_gate_opened();

-- Leaving review releases the item's locks, in the transaction that moved it.
create function damascus_release_locks() returns trigger
language plpgsql as $$
begin
    delete from named_locks where item_id = new.id;
    update coordination_gates set opened_at = null, opened_by = 'released when it left review'
    where item_id = new.id and kind = 'lock' and opened_at is not null;
    return null;
end;
$$;

create trigger work_items_release_locks after update of phase on work_items
    for each row when (old.phase = 'review' and new.phase is distinct from 'review')
    execute function damascus_release_locks();

-- The items waiting for lock p_name that its release by item p_released_by may wake:
-- in review, the lock's gate closed, no job yet.
create function damascus_lock_waiters(p_name text, p_released_by bigint)
returns setof bigint
language sql stable as $$
    select g.item_id from coordination_gates g
    join work_items i on i.id = g.item_id
    where g.kind = 'lock' and g.lock_name = p_name and g.opened_at is null
      and i.phase = 'review' and i.id <> p_released_by
      and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
$$;

-- A released lock goes to the item in review that has waited longest for it: touching
-- that item runs the spawn trigger, which takes the lock and spawns its job. An item
-- that cannot take it (an earlier lock of its own is held elsewhere, its project is
-- paused) is passed over for the next. The hand-over runs inside the releasing
-- transaction and never waits for a waiter's row (waiting there could close a cycle
-- with the transaction holding it): a waiter whose row is busy is skipped, and when the
-- lock is still free afterwards the hand-over says so on the damascus_respawn channel,
-- delivered when the release commits; each worker then runs its respawn pass at once,
-- which may wait for the busy row since it holds no other lock.
--
-- The common case comes first: every item that enters review takes a lock (its
-- queue's), so every item that leaves review releases one, and most releases have
-- nobody waiting; that case is one lookup. The waiters are read through
-- damascus_lock_waiters in FROM, where PostgreSQL inlines it (in a WHERE ... IN, it
-- reads every row of work_items).
create function damascus_hand_over_lock() returns trigger
language plpgsql as $$
declare
    v_waiter bigint;
begin
    if not exists (select 1 from damascus_lock_waiters(old.name, old.item_id)) then
        return null;
    end if;
    for v_waiter in
        select i.id from damascus_lock_waiters(old.name, old.item_id) w (id)
        join work_items i on i.id = w.id
        order by i.phase_entered_at, i.id
        for update of i skip locked
    loop
        perform damascus_look_again(array[v_waiter]);
        exit when exists (select 1 from named_locks where name = old.name);
    end loop;
    if not exists (select 1 from named_locks where name = old.name) then
        perform pg_notify('damascus_respawn', old.name);
    end if;
    return null;
end;
$$;

create trigger named_locks_hand_over after delete on named_locks
    for each row execute function damascus_hand_over_lock();

-- The name of the implicit lock of a merge queue.
create function damascus_merge_queue_lock(p_repository text, p_branch text) returns text
language sql immutable as $$
    select 'merge-queue ' || p_repository || ' ' || p_branch
$$;

-- Entering review enters the queue: the row, the lock gate (created once per item and
-- reused when it re-enters), and the event. Named so that it fires before
-- work_items_spawn_job (triggers of one event fire in name order), which then takes
-- the lock or leaves the item waiting.
create function damascus_enter_merge_queue() returns trigger
language plpgsql as $$
declare
    v_repository text;
    v_branch text;
    v_lock text;
begin
    select repository, default_branch into v_repository, v_branch
    from projects where id = new.project_id;
    v_lock := damascus_merge_queue_lock(v_repository, v_branch);
    insert into merge_queue (item_id, repository, base_branch, lock_name, entered_at)
    values (new.id, v_repository, v_branch, v_lock, new.phase_entered_at)
    on conflict (item_id) do nothing;
    if not exists (
        select 1 from coordination_gates
        where item_id = new.id and kind = 'lock' and lock_name = v_lock
    ) then
        insert into coordination_gates (item_id, kind, lock_name) values (new.id, 'lock', v_lock);
    end if;
    insert into events_outbox (item_id, project_id, kind, payload)
    values (new.id, new.project_id, 'merge_queue.entered', jsonb_build_object(
        'repository', v_repository, 'base_branch', v_branch,
        'position', (select count(*) from merge_queue q
                     where q.lock_name = v_lock
                       and (q.entered_at, q.item_id) <= (new.phase_entered_at, new.id))));
    return null;
end;
$$;

create trigger work_items_enter_merge_queue after update of phase on work_items
    for each row when (new.phase = 'review' and old.phase is distinct from 'review')
    execute function damascus_enter_merge_queue();
create trigger work_items_enter_merge_queue_on_insert after insert on work_items
    for each row when (new.phase = 'review')
    execute function damascus_enter_merge_queue();

-- Leaving review leaves the queue, with the event; a batch this item led goes back to
-- waiting (its followers not recorded with it stay queued, in their places).
create function damascus_leave_merge_queue() returns trigger
language plpgsql as $$
begin
    delete from merge_queue where item_id = new.id;
    if found then
        update merge_queue set state = 'waiting', state_since = now(), batch_head = null,
            tested_commit = null
        where batch_head = new.id;
        insert into events_outbox (item_id, project_id, kind, payload)
        values (new.id, new.project_id, 'merge_queue.left', jsonb_build_object('to', new.phase));
    end if;
    return null;
end;
$$;

create trigger work_items_leave_merge_queue after update of phase on work_items
    for each row when (old.phase = 'review' and new.phase is distinct from 'review')
    execute function damascus_leave_merge_queue();

-- The items queued behind p_head that its batch may take, in queue order: in review
-- with no job (waiting for the queue's lock), held back by no other gate and no other
-- named lock, their project not paused.
create function damascus_merge_queue_followers(p_head bigint, p_limit integer)
returns setof bigint
language sql stable as $$
    select q.item_id
    from merge_queue head
    join merge_queue q on q.lock_name = head.lock_name
        and (q.entered_at, q.item_id) > (head.entered_at, head.item_id)
    join work_items i on i.id = q.item_id
    where head.item_id = p_head
      and i.phase = 'review'
      and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
      and damascus_may_run(i.id, i.phase, i.project_id)
      and not exists (
          select 1 from coordination_gates g
          where g.item_id = i.id and g.kind = 'lock' and g.lock_name <> q.lock_name
      )
    order by q.entered_at, q.item_id
    limit greatest(p_limit, 0)
$$;

-- ===================================================================================
-- Functions: claiming, ending and keeping alive jobs; slots
-- ===================================================================================
--
-- The hot path of the queue is one round trip: damascus_claim also returns the item as
-- it is at the claim (the fields a verdict's transition is decided from) and when each
-- job became ready, so that a worker can decide the transition before it writes and
-- observe its pickup latency (`damascus_pickup_latency_seconds`); damascus_end_group
-- records a whole group of verdicts, fenced on that snapshot, and claims the next jobs,
-- in one statement run in autocommit.
--
-- Both functions plan their statements once per session (plan_cache_mode =
-- force_generic_plan). Their statements take arrays, and PostgreSQL would otherwise
-- plan each of them anew on every call, a custom plan per array, which costs more than
-- running them (measured: 2,501 plans in 2,500 calls, 0.01–0.3 ms each).

-- Makes slots 1..N exist and removes free slots above N; busy slots above N are removed
-- when their job releases them (damascus_free_slot).
create function damascus_set_concurrency(p_concurrency integer) returns void
language plpgsql as $$
begin
    update damascus_queue_settings set concurrency = p_concurrency, updated_at = now();
    insert into damascus_slots (slot)
    select g from generate_series(1, p_concurrency) g
    on conflict (slot) do nothing;
    delete from damascus_slots
    where slot > p_concurrency and (job_id is null or lease_until < now());
end;
$$;

-- Claims up to p_max ready jobs for worker p_worker, each with a free slot under the
-- global cap, under a lease of p_lease. It never waits for a lock: slots, job rows and
-- the old slots of re-claimed jobs are all taken FOR UPDATE SKIP LOCKED, so claimers
-- never share a slot or a job and cannot deadlock with each other or with a finish
-- (which locks its slot, then the item, then the job row). The held slots are the
-- running phases, so they can never be more than the cap. `ready_at` is each job's
-- run_at before the claim moved it to the lease's end.
create function damascus_claim(p_worker bigint, p_max integer, p_lease interval)
returns table (
    job_id uuid, claim_token uuid, slot integer, item_id bigint, phase work_phase,
    attempt integer, runs integer, attempts_left integer,
    item_project_id bigint, item_phase work_phase, item_phase_attempts integer,
    item_attempts_total integer, item_max_attempts_per_phase integer,
    item_max_attempts_total integer, ready_at timestamptz
)
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_slots integer[];
    v_jobs uuid[];
    v_ready timestamptz[];
    v_ready_ids uuid[];
    v_named uuid[];
    v_lockable uuid[];
begin
    select array_agg(free.slot order by free.slot) into v_slots
    from (
        select s.slot from damascus_slots s
        where (s.job_id is null or s.lease_until < now())
          -- Slots above a lowered cap stay until their job ends, but never take work.
          and s.slot <= (select q.concurrency from damascus_queue_settings q)
        order by s.slot
        limit p_max
        for update skip locked
    ) free;
    if v_slots is null then
        return;
    end if;
    select array_agg(ready.id order by ready.run_at),
           array_agg(ready.run_at order by ready.run_at)
    into v_jobs, v_ready
    from (
        -- The predicates match damascus_jobs_ready_idx, so this reads only what it
        -- returns.
        select j.job_id as id, j.run_at from damascus_jobs j
        where j.run_at <= now() and j.runs < j.max_runs
        order by j.run_at
        limit cardinality(v_slots)
        for update skip locked
    ) ready;
    if v_jobs is null then
        return;
    end if;
    -- When each job became ready (before the claim moves run_at to its lease).
    v_ready_ids := v_jobs;
    -- A job whose lease lapsed is still named by its old slot. Take that slot too, but
    -- without waiting: its old holder may be finishing right now. A job whose old slot
    -- is busy is left for a later claim.
    select array_agg(s.job_id) into v_named
    from damascus_slots s
    where s.job_id = any (v_jobs) and not (s.slot = any (v_slots));
    if v_named is not null then
        select array_agg(old.job_id) into v_lockable
        from (
            select s.job_id from damascus_slots s
            where s.job_id = any (v_named)
            for update skip locked
        ) old;
        v_jobs := array(
            select j from unnest(v_jobs) as j
            where not (j = any (v_named)) or j = any (coalesce(v_lockable, '{}'))
        );
        if cardinality(v_jobs) = 0 then
            return;
        end if;
    end if;
    -- Every slot still naming a job taken here lets go of it: an old slot outside
    -- v_slots (locked just above), and one among v_slots that the pairing below leaves
    -- without a job (more free slots than ready jobs). Every row this touches is locked
    -- by this claim already.
    update damascus_slots s
    set job_id = null, worker_id = null, claim_token = null, claimed_at = null, lease_until = null
    where s.job_id = any (v_jobs);
    update damascus_jobs dj
    set run_at = now() + p_lease, runs = dj.runs + 1
    where dj.job_id = any (v_jobs);
    return query
    with pairs as (
        select j.id, s.slot
        from unnest(v_jobs) with ordinality as j (id, n)
        join unnest(v_slots) with ordinality as s (slot, n) using (n)
    ), held as (
        update damascus_slots s
        set job_id = pairs.id, worker_id = p_worker, claim_token = gen_random_uuid(),
            claimed_at = now(), lease_until = now() + p_lease
        from pairs
        where s.slot = pairs.slot
        returning s.slot, s.job_id, s.claim_token
    )
    select held.job_id, held.claim_token, held.slot, dj.item_id, dj.phase, dj.attempt,
           dj.runs, dj.max_runs - dj.runs, i.project_id, i.phase, i.phase_attempts,
           i.attempts_total, i.max_attempts_per_phase, i.max_attempts_total, r.ready_at
    from held
    join damascus_jobs dj on dj.job_id = held.job_id
    join unnest(v_ready_ids, v_ready) as r (id, ready_at) on r.id = held.job_id
    join work_items i on i.id = dj.item_id;
end;
$$;

-- Extends the leases of the claims named by p_tokens and returns the tokens still
-- held: a claim missing from the result was lost (its lease ran out and another claim
-- took the job), and its run must stop. The slots are locked in slot order first, then
-- the job rows, the order every end of a claim uses: a group commit locks several of
-- a worker's slots in slot order, and a keep-alive that updated them in the table's
-- physical order (which in-place updates shuffle) could hold one the group wants while
-- waiting for one the group holds.
create function damascus_keep_alive(p_tokens uuid[], p_lease interval)
returns setof uuid
language plpgsql as $$
begin
    return query
    with locked as (
        select s.slot from damascus_slots s
        where s.claim_token = any (p_tokens)
        order by s.slot
        for update
    ), held as (
        update damascus_slots s
        set lease_until = now() + p_lease
        from locked
        where s.slot = locked.slot
        returning s.job_id, s.claim_token
    ), extended as (
        update damascus_jobs j
        set run_at = now() + p_lease
        from held
        where j.job_id = held.job_id
        returning j.job_id
    )
    select held.claim_token from held join extended on extended.job_id = held.job_id;
end;
$$;

-- Frees a slot, or removes it when the cap was lowered below it, and wakes workers.
create function damascus_free_slot(p_job uuid) returns void
language plpgsql as $$
begin
    delete from damascus_slots s
    using damascus_queue_settings q
    where s.job_id = p_job and s.slot > q.concurrency;
    update damascus_slots
    set job_id = null, worker_id = null, claim_token = null, claimed_at = null, lease_until = null
    where job_id = p_job;
    -- A worker waiting for a free slot (the cap is reached) wakes at once.
    perform pg_notify(damascus_job_channel(), '');
end;
$$;

-- Ending a job frees its slot and deletes its row; one call instead of two round trips.
create function damascus_delete_job(p_job uuid) returns void
language plpgsql as $$
begin
    perform damascus_free_slot(p_job);
    delete from damascus_jobs where job_id = p_job;
end;
$$;

-- Records decided verdicts of items the caller has locked: the one place a verdict is
-- written. Each entry of p_ends names its item and carries what damascus-core's
-- `decide` made of the verdict (phase, resume_phase, phase_attempts, attempts_total),
-- the verdict and its reason, the phase's output (spec, test_command, branch, pr_url),
-- the item.phase_changed event's payload, the run's costs (from_phase, attempt,
-- cost_usd and the ledger rows in costs), and, when the item blocks, its question
-- (question, context, on_answer). p_only, when given, limits it to the entries whose
-- claim is in it. The item moves, its event and cost rows are written, and each
-- blocked item gets its open question and an item.blocked event. The spawn trigger
-- queues the next job of each item that moved into a working phase.
create function damascus_record_verdicts(p_ends jsonb, p_only uuid[] default null)
returns void
language plpgsql as $$
begin
    with e as (
        select * from jsonb_to_recordset(p_ends) as e (
            claim uuid, item bigint, phase work_phase, resume_phase work_phase,
            phase_attempts integer, attempts_total integer, verdict verdict_kind,
            reason text, spec jsonb, test_command text, branch text, pr_url text,
            payload jsonb, cost_usd numeric)
        where p_only is null or e.claim = any (p_only)
    ), moved as (
        update work_items w
        set phase = e.phase, resume_phase = e.resume_phase,
            phase_attempts = e.phase_attempts, attempts_total = e.attempts_total,
            last_verdict = e.verdict, last_verdict_reason = e.reason,
            spec = coalesce(e.spec, w.spec),
            test_command = coalesce(e.test_command, w.test_command),
            branch = coalesce(e.branch, w.branch), pr_url = coalesce(e.pr_url, w.pr_url),
            cost_usd = w.cost_usd + coalesce(e.cost_usd, 0)
        from e
        where w.id = e.item
        returning w.id, w.project_id, e.payload
    )
    insert into events_outbox (item_id, project_id, kind, payload)
    select moved.id, moved.project_id, 'item.phase_changed', moved.payload from moved;
    insert into cost_ledger (item_id, phase, attempt, source, model, tokens_in, tokens_out, usd)
    select e.item, e.from_phase, e.attempt, c.source, c.model, c.tokens_in, c.tokens_out, c.usd
    from jsonb_to_recordset(p_ends) as e (
             claim uuid, item bigint, from_phase work_phase, attempt integer, costs jsonb)
         cross join lateral jsonb_to_recordset(coalesce(e.costs, '[]')) as c (
             source cost_source, model text, tokens_in bigint, tokens_out bigint, usd numeric)
    where p_only is null or e.claim = any (p_only);
    if not exists (select 1 from jsonb_array_elements(p_ends) x where x ? 'question'
                   and jsonb_typeof(x -> 'question') = 'string') then
        return;
    end if;
    with q as (
        select e.item, e.resume_phase, e.on_answer, e.question, coalesce(e.context, '') as context
        from jsonb_to_recordset(p_ends) as e (
            claim uuid, item bigint, resume_phase work_phase, on_answer work_phase,
            question text, context text)
        where e.question is not null and (p_only is null or e.claim = any (p_only))
    ), opened as (
        insert into human_issues (item_id, phase, on_answer, question, context)
        select q.item, q.resume_phase, q.on_answer, q.question, q.context from q
        on conflict (item_id) where status = 'open' do nothing
        returning human_issues.item_id, human_issues.id
    )
    insert into events_outbox (item_id, project_id, kind, payload)
    select q.item, w.project_id, 'item.blocked',
           jsonb_build_object('human_issue_id', opened.id, 'question', q.question,
                              'resume_phase', q.resume_phase, 'on_answer', q.on_answer)
    from q
    join work_items w on w.id = q.item
    left join opened on opened.item_id = q.item
    order by q.item;
end;
$$;

-- Records a group of verdicts of one worker and claims the next jobs, in one call.
--
-- p_ends holds one object per claim: the claim (claim, job, item), the item as the
-- worker decided the transition from (from_phase, from_phase_attempts,
-- from_attempts_total, from_max_per_phase, from_max_total), and what to write (phase,
-- resume_phase, phase_attempts, attempts_total, verdict, reason, spec, test_command,
-- branch, pr_url, payload of the event, cost_usd, costs: the ledger rows).
--
-- A claim's verdict is recorded when its slot still holds the claim and its item is
-- still exactly as decided from; both are locked (slots in slot order, as everywhere)
-- before anything is written. The others are left untouched (a lost claim, an item
-- that changed since the claim): the caller ends them one by one, deciding under the
-- item's lock and then calling this function with the fence it holds. A recorded end
-- frees its slot and deletes its job before the item moves (so the spawn trigger sees
-- no job), then damascus_record_verdicts writes the verdict.
--
-- Returns one row per recorded claim (`recorded` set, nothing else), then the jobs
-- claimed for the slots it freed: p_claim_max is the size of the group (at most that
-- many), p_running_besides what the worker runs besides the group, and the claim never
-- goes beyond the worker's fair share of the cap (the cap over the live workers,
-- rounded down, at least one), the group's unrecorded ends counting as running.
create function damascus_end_group(
    p_worker bigint,
    p_ends jsonb,
    p_claim_max integer,
    p_running_besides integer,
    p_lease interval
)
returns table (
    recorded uuid,
    job_id uuid, claim_token uuid, slot integer, item_id bigint, phase work_phase,
    attempt integer, runs integer, attempts_left integer,
    item_project_id bigint, item_phase work_phase, item_phase_attempts integer,
    item_attempts_total integer, item_max_attempts_per_phase integer,
    item_max_attempts_total integer, ready_at timestamptz
)
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_claims uuid[];
    v_jobs uuid[];
    v_share integer;
    v_recorded integer;
    v_freed integer[];
begin
    select array_agg(locked.claim), array_agg(locked.job) into v_claims, v_jobs
    from (
        select e.claim, e.job
        from jsonb_to_recordset(p_ends) as e (
            claim uuid, job uuid, item bigint, from_phase work_phase,
            from_phase_attempts integer, from_attempts_total integer,
            from_max_per_phase integer, from_max_total integer)
        join damascus_slots s
          on s.claim_token = e.claim and s.job_id = e.job and s.worker_id = p_worker
        join work_items i on i.id = e.item
        where i.phase = e.from_phase
          and i.phase_attempts = e.from_phase_attempts
          and i.attempts_total = e.from_attempts_total
          and i.max_attempts_per_phase = e.from_max_per_phase
          and i.max_attempts_total = e.from_max_total
        order by s.slot
        for update of s, i
    ) locked;
    if v_jobs is not null then
        delete from damascus_slots s
        using damascus_queue_settings q
        where s.job_id = any (v_jobs) and s.slot > q.concurrency;
        with freed as (
            update damascus_slots s
            set job_id = null, worker_id = null, claim_token = null, claimed_at = null,
                lease_until = null
            where s.job_id = any (v_jobs)
            returning s.slot
        )
        select array_agg(freed.slot) into v_freed from freed;
        delete from damascus_jobs j where j.job_id = any (v_jobs);
        perform damascus_record_verdicts(p_ends, v_claims);
        return query select c, null::uuid, null::uuid, null::integer, null::bigint,
            null::work_phase, null::integer, null::integer, null::integer, null::bigint,
            null::work_phase, null::integer, null::integer, null::integer, null::integer,
            null::timestamptz
        from unnest(v_claims) as c;
    end if;
    -- Ends not recorded here keep their slots until they are recorded alone: they
    -- count as running, and their slots are not there to take.
    v_recorded := coalesce(cardinality(v_jobs), 0);
    if v_recorded > 0 and p_claim_max > 0 then
        -- Rounded down (at least one): a group keeps no more than every live worker
        -- could keep at once, and what it frees beyond that goes to whichever worker
        -- claims it first (a worker's own claims take any free slot). Rounded up, two
        -- of three workers sharing a cap of 4 could each keep 2 for good and starve
        -- the third.
        select greatest(1, floor(q.concurrency::numeric / greatest(1, (
               select count(*) from damascus_worker_processes w
               where not w.stopping
                 and w.heartbeat_at >= now() - 4 * w.lease_ms * interval '1 millisecond'))))::integer
        into v_share
        from damascus_queue_settings q;
        return query select null::uuid, c.*
        from damascus_claim(
            p_worker,
            greatest(0, least(p_claim_max, v_recorded,
                              v_share - p_running_besides - (p_claim_max - v_recorded))),
            p_lease) c;
    end if;
    -- A slot freed here and not taken again (beyond this worker's share, or nothing
    -- was ready): a worker waiting for a free slot (the cap is reached) wakes at once.
    if v_freed is not null
       and exists (select 1 from damascus_slots s
                   where s.slot = any (v_freed) and s.job_id is null) then
        perform pg_notify(damascus_job_channel(), '');
    end if;
end;
$$;

-- ===================================================================================
-- Functions: budget
-- ===================================================================================

-- Reserves up to p_want USD (null: as much as the caps allow) for a call of p_item's
-- running claim p_claim. Budgets are told to agents in 1/10000 USD: less than that left
-- counts as nothing. Returns the amount granted (null when no cap applies) and,
-- when nothing could be granted, why: 'item' or 'project' when what is already spent
-- reached the cap (a person must raise it), 'held' when running calls hold the rest
-- (wait for them to settle), 'claim' when p_claim no longer holds a slot.
create function damascus_reserve_budget(p_claim uuid, p_item bigint, p_want numeric)
returns table (granted numeric, refused text, item_left numeric, project_left numeric)
language plpgsql as $$
declare
    v_project bigint;
    v_item_budget numeric;
    v_item_spent numeric;
    v_daily numeric;
    v_today_spent numeric;
    v_item_held numeric;
    v_project_held numeric;
    v_item_left numeric;
    v_project_left numeric;
    v_grant numeric;
begin
    select i.project_id, i.cost_budget_usd, i.cost_usd
    into v_project, v_item_budget, v_item_spent
    from work_items i where i.id = p_item;
    if not found then
        return query select null::numeric, 'item'::text, null::numeric, null::numeric;
        return;
    end if;
    -- One reservation at a time per project: the check and the hold are one step.
    select p.daily_cost_budget_usd into v_daily
    from projects p where p.id = v_project for no key update;
    if v_item_budget is null and v_daily is null then
        return query select null::numeric, null::text, null::numeric, null::numeric;
        return;
    end if;
    if not exists (select 1 from damascus_slots s where s.claim_token = p_claim) then
        return query select null::numeric, 'claim'::text, null::numeric, null::numeric;
        return;
    end if;
    -- Reservations whose claim ended (settled, or its worker died) hold nothing.
    delete from budget_reservations r
    where r.project_id = v_project
      and not exists (select 1 from damascus_slots s where s.claim_token = r.claim_token);
    select coalesce(sum(r.usd) filter (where r.item_id = p_item), 0), coalesce(sum(r.usd), 0)
    into v_item_held, v_project_held
    from budget_reservations r where r.project_id = v_project;
    if v_item_budget is not null then
        if v_item_budget - v_item_spent < 0.0001 then
            return query select null::numeric, 'item'::text, v_item_budget - v_item_spent, null::numeric;
            return;
        end if;
        v_item_left := v_item_budget - v_item_spent - v_item_held;
    end if;
    if v_daily is not null then
        select coalesce(sum(c.usd), 0) into v_today_spent
        from cost_ledger c join work_items i on i.id = c.item_id
        where i.project_id = v_project
          and c.created_at >= date_trunc('day', now() at time zone 'utc') at time zone 'utc';
        if v_daily - v_today_spent < 0.0001 then
            return query select null::numeric, 'project'::text, v_item_left, v_daily - v_today_spent;
            return;
        end if;
        v_project_left := v_daily - v_today_spent - v_project_held;
    end if;
    v_grant := least(p_want, v_item_left, v_project_left);
    if v_grant is null or v_grant < 0.0001 then
        return query select null::numeric, 'held'::text, v_item_left, v_project_left;
        return;
    end if;
    insert into budget_reservations (claim_token, item_id, project_id, usd)
    values (p_claim, p_item, v_project, v_grant);
    return query select v_grant, null::text, v_item_left, v_project_left;
end;
$$;

-- ===================================================================================
-- Functions and triggers: events, the outbox, webhooks
-- ===================================================================================

-- Events after the event `p_after` (0: from the start) in a gap-free order, up to
-- p_limit. When `p_after` is gone (pruned), it continues after that id.
create function damascus_events_after(p_after bigint, p_limit integer)
returns setof events_outbox
language sql stable as $$
    with settled as (select pg_snapshot_xmin(pg_current_snapshot()) as below),
         cursor as (
             select coalesce(
                 (select e.txid from events_outbox e where e.id = p_after),
                 -- A cursor that is gone: everything settled after its id.
                 '0'::xid8
             ) as txid
         )
    select e.* from events_outbox e, settled, cursor
    where e.txid < settled.below
      and (e.txid, e.id) > (cursor.txid, p_after)
      and (cursor.txid <> '0'::xid8 or e.id > p_after)
    order by e.txid, e.id
    limit p_limit
$$;

-- The cursor a new reader starts at to see only what happens from now on: the last
-- event in gap-free order that is settled (0 when there is none).
create function damascus_events_head()
returns bigint
language sql stable as $$
    select coalesce(
        (select e.id from events_outbox e
         where e.txid < pg_snapshot_xmin(pg_current_snapshot())
         order by e.txid desc, e.id desc limit 1),
        0)
$$;

-- Every event gets a delivery per registered webhook that wants its kind, in the
-- transaction that writes the event.
create function damascus_events_fan_out() returns trigger
language plpgsql as $$
begin
    insert into webhook_deliveries (webhook_id, event_id)
    select w.id, e.id
    from inserted e join webhooks w on w.event_kinds is null or e.kind = any (w.event_kinds);
    return null;
end;
$$;

create trigger events_outbox_fan_out
    after insert on events_outbox
    referencing new table as inserted
    for each statement execute function damascus_events_fan_out();

-- ===================================================================================
-- Functions: retention
-- ===================================================================================

-- Retention in one place: an event may go only when it is older than p_age, its item is
-- finished (or gone), and every webhook has it delivered or dead.
create function damascus_prune_events(p_age interval) returns bigint
language sql as $$
    with gone as (
        delete from events_outbox e
        where e.created_at < now() - p_age
          and not exists (select 1 from work_items i
                          where i.id = e.item_id and i.phase not in ('merged', 'cancelled'))
          and not exists (select 1 from webhook_deliveries d
                          where d.event_id = e.id and d.state in ('pending', 'retrying'))
        returning 1
    )
    select count(*) from gone
$$;

-- ===================================================================================
-- Views, for people at a psql prompt
-- ===================================================================================

-- One line per item, with names instead of ids.
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

-- Every job with its item, project and state.
--   running     held by a worker under a live lease
--   queued      ready for the next free slot
--   retry_wait  waiting out a retry backoff
--   dead        no attempts left; the reaper blocks its item with a human issue
-- A job whose lease lapsed shows as queued (or dead), without its former worker.
create view damascus_queue as
select
    dj.job_id,
    dj.item_id,
    p.name as project,
    dj.phase,
    dj.attempt,
    dj.runs,
    case
        when s.slot is not null and s.lease_until >= now() then 'running'
        when dj.runs >= dj.max_runs and dj.run_at <= now() then 'dead'
        when dj.run_at <= now() then 'queued'
        else 'retry_wait'
    end as state,
    dj.max_runs - dj.runs as attempts_left,
    dj.run_at as runnable_at,
    case when s.lease_until >= now() then s.slot end as slot,
    case when s.lease_until >= now() then w.host end as worker_host,
    case when s.lease_until >= now() then w.pid end as worker_pid,
    case when s.lease_until >= now() then s.claimed_at end as claimed_at,
    case when s.lease_until >= now() then s.lease_until end as lease_until,
    dj.last_error,
    dj.created_at
from damascus_jobs dj
join work_items i on i.id = dj.item_id
join projects p on p.id = i.project_id
left join damascus_slots s on s.job_id = dj.job_id
left join damascus_worker_processes w on w.id = s.worker_id;

create view damascus_workers as
select
    w.id,
    w.host,
    w.pid,
    w.concurrency,
    w.started_at,
    w.heartbeat_at,
    w.heartbeat_at > now() - interval '30 seconds' as alive,
    w.stopping,
    (select count(*) from damascus_slots s where s.worker_id = w.id and s.lease_until >= now()) as running
from damascus_worker_processes w;

-- Every merge queue in order, with its position.
create view damascus_merge_queue as
select
    q.repository,
    q.base_branch,
    row_number() over (partition by q.lock_name order by q.entered_at, q.item_id) as position,
    q.item_id,
    p.name as project,
    i.title,
    q.state,
    q.state_since,
    q.batch_head,
    q.tested_commit,
    q.entered_at
from merge_queue q
join work_items i on i.id = q.item_id
join projects p on p.id = i.project_id;

-- Per webhook: what is waiting, failing, given up, and how old the oldest undelivered
-- event is.
create view damascus_webhooks as
select w.name,
       w.event_kinds,
       w.max_attempts,
       count(*) filter (where d.state = 'pending') as pending,
       count(*) filter (where d.state = 'retrying') as retrying,
       count(*) filter (where d.state = 'dead') as dead,
       count(*) filter (where d.state = 'delivered') as delivered,
       now() - min(e.created_at) filter (where d.state in ('pending', 'retrying'))
           as oldest_undelivered_age,
       (array_agg(d.last_error order by d.updated_at desc)
           filter (where d.state in ('retrying', 'dead')))[1] as last_error
from webhooks w
left join webhook_deliveries d on d.webhook_id = w.id
left join events_outbox e on e.id = d.event_id
group by w.id
order by w.name;

-- ===================================================================================
-- Initial rows
-- ===================================================================================

-- The queue settings' one row, and one slot per phase its default concurrency (4) lets
-- run at once; damascus_set_concurrency keeps the slots in step when the cap changes.
insert into damascus_queue_settings default values;
insert into damascus_slots (slot) select g from generate_series(1, 4) g;
