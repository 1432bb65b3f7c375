-- The queue engine around sqlxmq's tables: which item and phase each job advances,
-- a global cap on running phases (slots), worker processes with heartbeats, leases,
-- and the trigger that spawns an item's job in the same transaction as the change that
-- made it runnable. See docs/QUEUE.md for the design and docs/STATE_MACHINE.md for the
-- job states.

-- sqlxmq's self-reference (after_message_id REFERENCES mq_msgs ON DELETE SET DEFAULT)
-- has no index of its own, so every deleted message made PostgreSQL scan the whole
-- table for referencing rows: finishing a job cost O(backlog). This index makes that
-- check a lookup.
create index mq_msgs_after_message_id_idx on mq_msgs (after_message_id) where after_message_id is not null;

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
insert into damascus_queue_settings default values;

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
-- died) and its job becomes claimable again, since the job's attempt_at expired too.
create table damascus_slots (
    slot integer primary key
        constraint damascus_slots_positive check (slot >= 1),
    job_id uuid unique references mq_msgs (id) on delete set null,
    worker_id bigint references damascus_worker_processes (id) on delete set null,
    -- Names one claim: every end of a claim and every keep-alive is fenced on it, so a
    -- worker's stale run of a job it claimed again cannot pass for the new one.
    claim_token uuid unique,
    claimed_at timestamptz,
    lease_until timestamptz
);

-- Which item, phase and attempt a queue message advances. One job per item at most:
-- the unique key makes "exactly one job per runnable item" a database fact.
create table damascus_jobs (
    job_id uuid primary key references mq_msgs (id) on delete cascade,
    item_id bigint not null unique references work_items (id) on delete cascade,
    phase work_phase not null
        constraint damascus_jobs_working_phase check (phase in ('spec', 'build', 'review')),
    attempt integer not null
        constraint damascus_jobs_attempt_positive check (attempt >= 1),
    -- How often the job was claimed: its runs, including one going on now.
    runs integer not null default 0
        constraint damascus_jobs_runs_non_negative check (runs >= 0),
    last_error text,
    created_at timestamptz not null default now()
);

-- The queue channel every item job uses. One channel keeps the claim query a single
-- index range scan in attempt_at order.
create function damascus_job_channel() returns text
language sql immutable as $$ select 'damascus.advance'::text $$;

-- Spawns the job of an item in a working phase that has none, in the transaction that
-- made it runnable: an insert from the binary, an UPDATE typed into psql, an answer,
-- a gate opening. mq_insert sends the NOTIFY that wakes idle workers at commit.
create function damascus_spawn_job() returns trigger
language plpgsql as $$
declare
    v_job uuid := gen_random_uuid();
    v_attempts integer;
begin
    if new.phase not in ('spec', 'build', 'review') then
        return null;
    end if;
    if exists (select 1 from damascus_jobs where item_id = new.id) then
        return null;
    end if;
    select job_attempts into v_attempts from damascus_queue_settings;
    perform mq_insert(array[(
        v_job, interval '0', v_attempts - 1, interval '1 second',
        damascus_job_channel(), '', null, false, 'advance',
        json_build_object('item_id', new.id, 'phase', new.phase, 'attempt', new.phase_attempts + 1)::text,
        null
    )::mq_new_t]);
    insert into damascus_jobs (job_id, item_id, phase, attempt)
    values (v_job, new.id, new.phase, new.phase_attempts + 1);
    return null;
end;
$$;

-- Only changes that can make an item runnable fire it: its phase or attempt counter
-- (a verdict, an answer, an UPDATE in psql), or a deliberate touch of updated_at (the
-- reaper's safety net). A change of cost or title alone never spawns a job.
create trigger work_items_spawn_job after insert or update of phase, phase_attempts, resume_phase, updated_at
    on work_items
    for each row execute function damascus_spawn_job();

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

select damascus_set_concurrency(4);

-- Claims up to p_max ready jobs for worker p_worker, each with a free slot under the
-- global cap, under a lease of p_lease. It never waits for a lock: slots, queue rows and
-- the old slots of re-claimed jobs are all taken FOR UPDATE SKIP LOCKED, so claimers
-- never share a slot or a job and cannot deadlock with each other or with a finish
-- (which locks its slot, then the item, then the queue row). The held slots are the
-- running phases, so they can never be more than the cap.
create function damascus_claim(p_worker bigint, p_max integer, p_lease interval)
returns table (job_id uuid, claim_token uuid, slot integer, item_id bigint, phase work_phase,
               attempt integer, runs integer, attempts_left integer)
language plpgsql as $$
declare
    v_slots integer[];
    v_jobs uuid[];
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
    select array_agg(ready.id order by ready.attempt_at) into v_jobs
    from (
        -- The predicates match sqlxmq's partial index on
        -- (channel_name, channel_args, attempt_at), so this reads only what it returns.
        select m.id, m.attempt_at from mq_msgs m
        where m.channel_name = damascus_job_channel()
          and m.channel_args = ''
          and m.id != uuid_nil()
          and not mq_uuid_exists(m.after_message_id)
          and m.attempt_at <= now()
          and m.attempts > 0
        order by m.attempt_at
        limit cardinality(v_slots)
        for update skip locked
    ) ready;
    if v_jobs is null then
        return;
    end if;
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
    update mq_msgs m
    set attempt_at = now() + p_lease, attempts = m.attempts - 1
    where m.id = any (v_jobs);
    update damascus_jobs dj set runs = dj.runs + 1 where dj.job_id = any (v_jobs);
    -- Every row this touches is locked by this claim already.
    update damascus_slots s
    set job_id = null, worker_id = null, claim_token = null, claimed_at = null, lease_until = null
    where s.job_id = any (v_jobs);
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
    select held.job_id, held.claim_token, held.slot, dj.item_id, dj.phase, dj.attempt, dj.runs, m.attempts
    from held
    join mq_msgs m on m.id = held.job_id
    left join damascus_jobs dj on dj.job_id = held.job_id;
end;
$$;

-- Extends the leases of the claims named by p_tokens and returns the tokens still
-- held: a claim missing from the result was lost (its lease ran out and another claim
-- took the job), and its run must stop. The slot row is locked before the queue row,
-- the order every end of a claim uses.
create function damascus_keep_alive(p_tokens uuid[], p_lease interval)
returns setof uuid
language plpgsql as $$
begin
    return query
    with held as (
        update damascus_slots s
        set lease_until = now() + p_lease
        where s.claim_token = any (p_tokens)
        returning s.job_id, s.claim_token
    ), extended as (
        update mq_msgs m
        set attempt_at = now() + p_lease
        from held
        where m.id = held.job_id
        returning m.id
    )
    select held.claim_token from held join extended on extended.id = held.job_id;
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
    perform pg_notify('mq_' || damascus_job_channel(), '');
end;
$$;

-- For people at a psql prompt: every job with its item, project and state.
--   running     held by a worker under a live lease
--   queued      ready for the next free slot
--   retry_wait  waiting out a retry backoff
--   dead        no attempts left; the reaper blocks its item with a human issue
-- A job whose lease lapsed shows as queued (or dead), without its former worker.
create view damascus_queue as
select
    m.id as job_id,
    dj.item_id,
    p.name as project,
    dj.phase,
    dj.attempt,
    dj.runs,
    case
        when s.slot is not null and s.lease_until >= now() then 'running'
        when m.attempts <= 0 and (m.attempt_at is null or m.attempt_at <= now()) then 'dead'
        when m.attempt_at <= now() then 'queued'
        else 'retry_wait'
    end as state,
    m.attempts as attempts_left,
    m.attempt_at as runnable_at,
    case when s.lease_until >= now() then s.slot end as slot,
    case when s.lease_until >= now() then w.host end as worker_host,
    case when s.lease_until >= now() then w.pid end as worker_pid,
    case when s.lease_until >= now() then s.claimed_at end as claimed_at,
    case when s.lease_until >= now() then s.lease_until end as lease_until,
    dj.last_error,
    m.created_at
from mq_msgs m
left join damascus_jobs dj on dj.job_id = m.id
left join work_items i on i.id = dj.item_id
left join projects p on p.id = i.project_id
left join damascus_slots s on s.job_id = m.id
left join damascus_worker_processes w on w.id = s.worker_id
where m.id != uuid_nil() and m.channel_name = damascus_job_channel();

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
