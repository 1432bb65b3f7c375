-- Coordination gates hold an item back until they open:
--   depends_on  the other item is merged (opened by the merge itself);
--   approval    a person approves the spec before build (projects.require_approval);
-- A closed depends_on gate holds every phase; a closed approval gate holds build.
-- Opening a gate touches its item, so the spawn trigger gives it its job at once.
-- (Merges of one repository are serialised by an advisory lock in the reviewer.)

alter table projects
    add column require_approval boolean not null default false;

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
    if exists (
        select 1 from coordination_gates g
        where g.item_id = new.id and g.opened_at is null
          and (g.kind = 'depends_on' or (g.kind = 'approval' and new.phase = 'build'))
    ) then
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
    update work_items set updated_at = now() where id = new.item_id;
    return null;
end;
$$;

create trigger coordination_gates_opened after update of opened_at on coordination_gates
    for each row when (old.opened_at is null and new.opened_at is not null)
    execute function damascus_gate_opened();
