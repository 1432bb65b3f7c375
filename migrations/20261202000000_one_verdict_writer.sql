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
        perform pg_notify('mq_' || damascus_job_channel(), '');
    end if;
end;
$$;
