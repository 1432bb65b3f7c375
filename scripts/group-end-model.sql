-- One steady-state cycle of the queue's hot path, for pgbench: worker 1 ends every job
-- it holds (each a pass, review -> merged) with damascus_end_group, which also claims
-- the next ones. Builds in SQL the same ends a worker builds in Rust (a little extra
-- work the worker does not put on the server). Used by scripts/group-end-model.sh.
create or replace function model_cycle(p_group integer) returns integer
language plpgsql as $$
declare
    v_ends jsonb;
    v_rows integer;
begin
    select coalesce(jsonb_agg(jsonb_build_object(
        'claim', s.claim_token, 'job', s.job_id, 'item', i.id,
        'from_phase', i.phase, 'from_phase_attempts', i.phase_attempts,
        'from_attempts_total', i.attempts_total,
        'from_max_per_phase', i.max_attempts_per_phase,
        'from_max_total', i.max_attempts_total, 'attempt', dj.attempt,
        'phase', 'merged', 'resume_phase', null, 'phase_attempts', 0,
        'attempts_total', i.attempts_total + 1, 'verdict', 'pass', 'reason', null,
        'spec', null, 'test_command', null, 'branch', null, 'pr_url', null,
        'payload', jsonb_build_object('from', 'review', 'to', 'merged', 'verdict', 'pass'),
        'cost_usd', null, 'costs', null)), '[]'::jsonb)
    into v_ends
    from damascus_slots s
    join damascus_jobs dj on dj.job_id = s.job_id
    join work_items i on i.id = dj.item_id
    where s.worker_id = 1;
    if jsonb_array_length(v_ends) = 0 then
        select count(*) into v_rows from damascus_claim(1, p_group, '30 s');
    else
        select count(*) into v_rows
        from damascus_end_group(1, v_ends, jsonb_array_length(v_ends), 0, '30 s');
    end if;
    return v_rows;
end;
$$;
