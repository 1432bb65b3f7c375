-- The claim also says when each job it took became ready (`ready_at`: its attempt_at
-- before the claim moved it to the lease's end), so the worker can observe its pickup
-- latency (`damascus_pickup_latency_seconds`). Both functions are otherwise as in
-- migration 12.
drop function damascus_end_group(bigint, jsonb, integer, integer, interval);
drop function damascus_claim(bigint, integer, interval);

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
    select array_agg(ready.id order by ready.attempt_at),
           array_agg(ready.attempt_at order by ready.attempt_at)
    into v_jobs, v_ready
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
    -- When each job became ready (before the claim moves attempt_at to its lease).
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
    update mq_msgs m
    set attempt_at = now() + p_lease, attempts = m.attempts - 1
    where m.id = any (v_jobs);
    update damascus_jobs dj set runs = dj.runs + 1 where dj.job_id = any (v_jobs);
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
           dj.runs, m.attempts, i.project_id, i.phase, i.phase_attempts, i.attempts_total,
           i.max_attempts_per_phase, i.max_attempts_total, r.ready_at
    from held
    join mq_msgs m on m.id = held.job_id
    join unnest(v_ready_ids, v_ready) as r (id, ready_at) on r.id = held.job_id
    left join damascus_jobs dj on dj.job_id = held.job_id
    left join work_items i on i.id = dj.item_id;
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
-- before anything is written. The others are left untouched for the caller to end
-- one by one. Recorded exactly as the one-by-one path records them: the job deleted
-- and its slot freed before the item moves (so the spawn trigger sees no job), the
-- item moved, one item.phase_changed event, the cost rows.
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
        delete from mq_msgs m where m.id = any (v_jobs);
        delete from mq_payloads p where p.id = any (v_jobs);
        with e as (
            select * from jsonb_to_recordset(p_ends) as e (
                claim uuid, item bigint, phase work_phase, resume_phase work_phase,
                phase_attempts integer, attempts_total integer, verdict verdict_kind,
                reason text, spec jsonb, test_command text, branch text, pr_url text,
                payload jsonb, cost_usd numeric)
            where e.claim = any (v_claims)
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
        where e.claim = any (v_claims);
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
        perform pg_notify('mq_' || damascus_job_channel(), '');
    end if;
end;
$$;
