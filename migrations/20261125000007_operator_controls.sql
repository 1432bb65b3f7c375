-- Operator controls: a paused project's items get no new jobs (running phases finish),
-- and cancelling an item tells the worker running it to stop at once.

-- As before (migration 3), plus: nothing is spawned for an item of a paused project.
-- Resuming the project touches its working items, and this trigger spawns their jobs.
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
    if exists (select 1 from projects where id = new.project_id and paused) then
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

-- How the forge merges a project's pull requests (Gitea's `Do`, GitHub's
-- `merge_method`); the local forge always makes a merge commit.
alter table projects
    add column merge_method text not null default 'merge'
        constraint projects_merge_method_known check (merge_method in ('merge', 'squash', 'rebase'));
