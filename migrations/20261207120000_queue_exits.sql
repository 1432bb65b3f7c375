-- The queue's exit paths: every end of a run records what it spent, a finished item
-- has no job, a cancel and a pause are exact, and the queue's repeated rules live in one
-- place each (freeing slots, a worker's liveness).
--
-- Lock order, as everywhere: slot row, then item row, then job row. Reservations are
-- locked after the item row.

-- ===================================================================================
-- One rule: whether a worker is alive
-- ===================================================================================

-- A worker is alive while its heartbeat is younger than four of its own leases (a
-- keep-alive, which carries the heartbeat, goes out three times per lease). The
-- reaper, the fair share of a group end and the damascus_workers view all ask this.
create function damascus_worker_alive(p_heartbeat_at timestamptz, p_lease_ms bigint)
returns boolean
language sql stable as $$
    select p_heartbeat_at >= now() - 4 * p_lease_ms * interval '1 millisecond'
$$;

create or replace view damascus_workers as
select
    w.id,
    w.host,
    w.pid,
    w.concurrency,
    w.started_at,
    w.heartbeat_at,
    damascus_worker_alive(w.heartbeat_at, w.lease_ms) as alive,
    w.stopping,
    (select count(*) from damascus_slots s where s.worker_id = w.id and s.lease_until >= now()) as running
from damascus_worker_processes w;

-- ===================================================================================
-- One place frees slots
-- ===================================================================================

-- Frees the slots that name any of p_jobs (or removes those above a lowered cap) and
-- returns the freed slots that remain. No NOTIFY: the caller decides whether a freed
-- slot is left for other workers.
create function damascus_free_slots(p_jobs uuid[]) returns integer[]
language plpgsql as $$
declare
    v_freed integer[];
begin
    delete from damascus_slots s
    using damascus_queue_settings q
    where s.job_id = any (p_jobs) and s.slot > q.concurrency;
    with freed as (
        update damascus_slots s
        set job_id = null, worker_id = null, claim_token = null, claimed_at = null,
            lease_until = null
        where s.job_id = any (p_jobs)
        returning s.slot
    )
    select array_agg(freed.slot) into v_freed from freed;
    return v_freed;
end;
$$;

-- Frees one job's slot and wakes a worker waiting for a free slot.
create or replace function damascus_free_slot(p_job uuid) returns void
language plpgsql as $$
begin
    perform damascus_free_slots(array[p_job]);
    perform pg_notify(damascus_job_channel(), '');
end;
$$;

-- ===================================================================================
-- Budget reservations: held until settled
-- ===================================================================================

-- A reservation counts against the item's budget and its project's daily budget
-- until it is settled: by the end that records the run's real costs (a verdict, a
-- retry), which deletes it, or by an end without costs (a cancel, a release at
-- shutdown, a panic, a claim lost and reaped), which turns it into a cost_ledger row
-- that says its spend is unknown, for the amount reserved
-- (damascus_record_unreported_spend). phase and attempt are the run's, for that row.
-- Under the baseline a reservation lapsed when its claim left its slot, and lapsed rows
-- were deleted only by the next reservation of their project: those rows were settled
-- then (their end recorded the real cost, or the claim was lost), and must not count
-- from now on.
delete from budget_reservations r
where not exists (select 1 from damascus_slots s where s.claim_token = r.claim_token);
alter table budget_reservations add column phase work_phase;
alter table budget_reservations add column attempt integer;
create index budget_reservations_claim_idx on budget_reservations (claim_token);

comment on table budget_reservations is
    'Budget held by model and agent calls, counted against caps until settled: deleted when the run''s real costs are recorded, or made a "spend unknown" cost_ledger row when its run ended without them.';

-- Turns the unsettled reservations of the claims p_claims into cost_ledger rows for
-- the amount reserved, marked as spend unknown in their model column the way the
-- agent marks a run killed before it reported ('… (spend unknown: WHY before it
-- reported)'), adds them to their items' cost, and deletes them. The caller holds the
-- items' rows locked (or is the item's own end), so this takes reservation rows only
-- after item rows. Returns how many reservations it recorded.
create function damascus_record_unreported_spend(p_claims uuid[], p_why text)
returns integer
language plpgsql as $$
declare
    v_recorded integer;
begin
    with gone as (
        delete from budget_reservations r
        where r.claim_token = any (p_claims)
        returning r.item_id, r.phase, r.attempt, r.usd
    ), rows as (
        select gone.item_id,
               coalesce(gone.phase, case when i.phase in ('spec', 'build', 'review')
                                         then i.phase else 'build' end) as phase,
               greatest(coalesce(gone.attempt, i.phase_attempts + 1), 1) as attempt,
               gone.usd
        from gone join work_items i on i.id = gone.item_id
    ), ledger as (
        insert into cost_ledger (item_id, phase, attempt, source, model, usd)
        select rows.item_id, rows.phase, rows.attempt,
               case when rows.phase = 'spec' then 'llm' else 'agent' end::cost_source,
               'budget reservation (spend unknown: ' || p_why || ' before it reported)',
               rows.usd
        from rows
        returning item_id, usd
    ), items as (
        update work_items w set cost_usd = w.cost_usd + spent.usd
        from (select item_id, sum(usd) as usd from ledger group by item_id) spent
        where w.id = spent.item_id
        returning w.id
    )
    select count(*) into v_recorded from ledger;
    return v_recorded;
end;
$$;

-- Reserves up to p_want USD (null: as much as the caps allow) for a call of p_item's
-- running claim p_claim. As in the baseline, but every reservation not yet settled
-- counts (one whose claim ended without settling it is recorded as spend by the
-- reaper; it never lapses uncounted), and each reservation names its run's phase and
-- attempt for the ledger row it may become.
create or replace function damascus_reserve_budget(p_claim uuid, p_item bigint, p_want numeric)
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
    v_phase work_phase;
    v_attempt integer;
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
    select j.phase, j.attempt into v_phase, v_attempt
    from damascus_slots s join damascus_jobs j on j.job_id = s.job_id
    where s.claim_token = p_claim;
    if not found then
        return query select null::numeric, 'claim'::text, null::numeric, null::numeric;
        return;
    end if;
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
    insert into budget_reservations (claim_token, item_id, project_id, usd, phase, attempt)
    values (p_claim, p_item, v_project, v_grant, v_phase, v_attempt);
    return query select v_grant, null::text, v_item_left, v_project_left;
end;
$$;

-- ===================================================================================
-- A finished item has no job
-- ===================================================================================

-- A job for an item that is merged or cancelled is refused: nothing may run for a
-- finished item, whoever inserts the row. It fires on insert and on a change of the
-- job's item only, so claims and keep-alives (which move run_at and runs) never call
-- it.
create function damascus_job_for_live_item() returns trigger
language plpgsql as $$
declare
    v_phase work_phase;
begin
    select i.phase into v_phase from work_items i where i.id = new.item_id;
    if v_phase in ('merged', 'cancelled') then
        raise exception 'item % is %: a finished item gets no job', new.item_id, v_phase
            using errcode = 'check_violation';
    end if;
    return new;
end;
$$;

create trigger damascus_jobs_live_item before insert or update of item_id on damascus_jobs
    for each row execute function damascus_job_for_live_item();

-- An item that becomes merged or cancelled loses its job in the same transaction: the
-- job's slot is freed (the worker running it finds its claim gone at its next
-- keep-alive, or at once on a cancel's NOTIFY, and kills the phase's processes), and
-- what the run had reserved is recorded as spend unknown. A verdict that merges has
-- deleted its job before the move, so for it this finds nothing. The operator's cancel
-- locks the job's slot before the item (the queue's lock order); an UPDATE typed into
-- psql locks the item first, and a phase ending at that instant may then deadlock with
-- it, which PostgreSQL breaks by aborting one of the two. What it deletes is this
-- item's own, so its place among the other triggers on the phase does not matter.
create function damascus_end_jobs_of_finished_item() returns trigger
language plpgsql as $$
declare
    v_job uuid;
begin
    -- Most moves to merged hold no reservation (the merging verdict settled its own):
    -- one index probe, and nothing more.
    if exists (select 1 from budget_reservations r where r.item_id = new.id) then
        perform damascus_record_unreported_spend(
            array(select r.claim_token from budget_reservations r where r.item_id = new.id),
            case when new.phase = 'cancelled' then 'the item was cancelled'
                 else 'the run ended' end);
    end if;
    select j.job_id into v_job from damascus_jobs j where j.item_id = new.id;
    if found then
        perform damascus_delete_job(v_job);
    end if;
    return null;
end;
$$;

create trigger work_items_end_jobs_when_finished after update of phase on work_items
    for each row when (new.phase in ('merged', 'cancelled') and old.phase is distinct from new.phase)
    execute function damascus_end_jobs_of_finished_item();

-- ===================================================================================
-- Spawning: exact against a pause
-- ===================================================================================

-- As in the baseline, but the project's row is key-share locked on every spawn, not
-- only when it is paused. Pausing and resuming lock the project's row FOR UPDATE
-- (damascus-db operator), which conflicts with KEY SHARE: a pause either commits
-- before this lock is granted, and then damascus_may_run (a new snapshot, read after
-- the lock) sees it paused and nothing is spawned, or it waits for this transaction,
-- and its withdrawal of the project's queued jobs then sees the job spawned here. A
-- resume likewise waits for a spawn of its project or is seen by it. KEY SHARE is the
-- lock a foreign key check takes: budget reservations (FOR NO KEY UPDATE) and other
-- spawns of the project do not wait for it.
create or replace function damascus_spawn_job() returns trigger
language plpgsql as $$
declare
    v_attempts integer;
begin
    if exists (select 1 from damascus_jobs where item_id = new.id) then
        return null;
    end if;
    perform 1 from projects where id = new.project_id for key share;
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

-- ===================================================================================
-- Claims and group ends: slots freed in one place, reservations settled
-- ===================================================================================

-- As in the baseline; the old slots of re-claimed jobs are freed by
-- damascus_free_slots. A lapsed claim's reservations stay until the reaper records
-- them (a claim never waits for an item's row).
create or replace function damascus_claim(p_worker bigint, p_max integer, p_lease interval)
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
    perform damascus_free_slots(v_jobs);
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

-- As in the baseline; slots are freed by damascus_free_slots, a recorded claim's
-- reservations are settled with its verdict (its real costs), and the fair share
-- counts the workers damascus_worker_alive calls alive.
create or replace function damascus_end_group(
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
        v_freed := damascus_free_slots(v_jobs);
        delete from damascus_jobs j where j.job_id = any (v_jobs);
        -- The verdicts carry the runs' real costs: their reservations are settled
        -- (before the items move, so a move to merged finds none to record as unknown).
        delete from budget_reservations r where r.claim_token = any (v_claims);
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
                 and damascus_worker_alive(w.heartbeat_at, w.lease_ms)))))::integer
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
