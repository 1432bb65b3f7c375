-- Named locks: a `lock` gate is a named mutex an item must hold to run its review
-- phase (its tests and its merge). Items that share a lock name never review, and so
-- never merge, at the same time; items without it are not held back.
--
-- An item takes its locks when it enters review (in the spawn trigger, so in the
-- transaction that moved it there), in name order, stopping at the first lock another
-- item holds: two items can never wait for each other. It holds them until it leaves
-- review in any direction (merged, failed back to build, blocked, cancelled), in the
-- transaction that moved it. Releasing a lock hands it to the item that has waited
-- longest for it, in the same transaction, and that item's job is spawned there (or,
-- when that item's row is busy at that instant, by the reaper's next pass). A paused
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
create index coordination_gates_lock_name_idx on coordination_gates (lock_name)
    where kind = 'lock';

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

-- Takes the item's locks in name order and says whether it holds them all. It stops at
-- the first lock another item holds; the locks taken before it stay held (ordered
-- acquisition cannot deadlock), and the release of that lock hands it over.
create function damascus_take_locks(p_item bigint) returns boolean
language plpgsql as $$
declare
    v_gate record;
begin
    for v_gate in
        select g.id, g.lock_name from coordination_gates g
        where g.item_id = p_item and g.kind = 'lock'
        order by g.lock_name
    loop
        loop
            insert into named_locks (name, item_id) values (v_gate.lock_name, p_item)
            on conflict (name) do nothing;
            exit when exists (
                select 1 from named_locks where name = v_gate.lock_name and item_id = p_item
            );
            -- Another item holds it. Share-lock the holder's row: a release of it that
            -- is committing now waits for this transaction, and its hand-over then sees
            -- this item waiting. If the row is gone, it was released meanwhile: retry.
            perform 1 from named_locks where name = v_gate.lock_name for key share;
            if found then
                return false;
            end if;
        end loop;
        -- The gate shows it (kind lock is not watched by damascus_gate_opened).
        update coordination_gates set opened_at = now(), opened_by = 'holds the lock'
        where id = v_gate.id and opened_at is null;
    end loop;
    return true;
end;
$$;

-- As before (migration 8), with the gate rule in damascus_gates_hold, plus: entering
-- review takes the item's named locks, and a lock another item holds spawns nothing.
create or replace function damascus_spawn_job() returns trigger
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
    -- FOR SHARE: a pause committing right now is waited for and seen, so no job is
    -- spawned behind it.
    if exists (select 1 from projects where id = new.project_id and paused for share) then
        return null;
    end if;
    if damascus_gates_hold(new.id, new.phase) then
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

-- A released lock goes to the item in review that has waited longest for it: touching
-- that item runs the spawn trigger, which takes the lock and spawns its job. An item
-- that cannot take it (an earlier lock of its own is held elsewhere, its project is
-- paused) is passed over for the next. A waiter whose row another transaction holds
-- right now is skipped rather than waited for (waiting could close a cycle with that
-- transaction); the reaper's safety net touches it within one reap interval.
create function damascus_hand_over_lock() returns trigger
language plpgsql as $$
declare
    v_waiter bigint;
begin
    for v_waiter in
        select g.item_id from coordination_gates g
        join work_items i on i.id = g.item_id
        where g.kind = 'lock' and g.lock_name = old.name and g.opened_at is null
          and i.phase = 'review' and i.id <> old.item_id
          and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
        order by i.phase_entered_at, i.id
        for update of i skip locked
    loop
        update work_items set updated_at = now() where id = v_waiter;
        exit when exists (select 1 from named_locks where name = old.name);
    end loop;
    return null;
end;
$$;

create trigger named_locks_hand_over after delete on named_locks
    for each row execute function damascus_hand_over_lock();

-- Opening a lock gate is the spawn trigger's own doing; only other gates touch the item.
drop trigger coordination_gates_opened on coordination_gates;
create trigger coordination_gates_opened after update of opened_at on coordination_gates
    for each row when (old.opened_at is null and new.opened_at is not null and new.kind <> 'lock')
    execute function damascus_gate_opened();
