-- Spend caps that hold under concurrency, and the process groups a phase runs.
--
-- A model or agent call first reserves budget: the item's budget and its project's
-- daily budget are checked against what is spent *and* what running calls hold, under a
-- row lock on the project, so concurrent calls of one project cannot all pass the check
-- and overspend together. A reservation belongs to one claim of a job: it holds while
-- that claim holds its slot, and lapses in the same transaction that ends the claim and
-- records the real cost (the slot's claim token changes), so settling needs no write of
-- its own and a dead worker's reservations lapse with its lease.

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

-- Where a project's agent and tests run: as the worker's processes with an allow-listed
-- environment (none), or in a bubblewrap namespace where only their worktree and HOME
-- are writable and the data directory is hidden (bwrap).
alter table projects add column sandbox text not null default 'none'
    constraint projects_sandbox_known check (sandbox in ('none', 'bwrap'));
