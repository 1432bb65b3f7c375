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

create or replace function damascus_spawn_job() returns trigger
language plpgsql as $$
declare
    v_job uuid := gen_random_uuid();
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

create or replace function damascus_gate_opened() returns trigger
language plpgsql as $$
begin
    perform damascus_look_again(array[new.item_id]);
    return null;
end;
$$;

create or replace function damascus_hand_over_lock() returns trigger
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

create or replace function damascus_merge_queue_followers(p_head bigint, p_limit integer)
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
