-- The merge queue: one queue per repository and base branch. An item whose build
-- passed enters its queue when it enters review; it leaves when it leaves review (merged,
-- sent back to build, blocked, cancelled), in the transaction that moved it.
--
-- The queue's head is the one item of the queue that runs: every queued item has a
-- `lock` gate on the queue's implicit lock, named 'merge-queue <repository> <branch>'
-- (a space, which user lock names cannot hold, keeps the two apart), and the named-lock
-- machinery of migrations 10 and 14 does the rest: the spawn trigger takes the lock when
-- the item enters review, the item that leaves review hands it to the item that has
-- waited longest (phase_entered_at order, which is the queue's order), and a waiter
-- whose row was busy gets it through the respawn pass. The head's review job brings its
-- branch up to date, tests the commit that will become the base branch (together with
-- up to batch_size - 1 followers) and merges it; followers of a batch are recorded in
-- the head's transaction.

create type merge_queue_state as enum ('waiting', 'updating', 'testing', 'merging');

alter table projects
    add column merge_batch_size integer not null default 4
        constraint projects_merge_batch_size_range check (merge_batch_size between 1 and 32),
    add column branch_update text not null default 'merge'
        constraint projects_branch_update_known check (branch_update in ('merge', 'rebase'));

create table merge_queue (
    item_id bigint primary key references work_items (id) on delete cascade,
    -- The queue: the item's project's repository and default branch at entry.
    repository text not null,
    base_branch text not null,
    lock_name text not null,
    -- The queue's order (the item's phase_entered_at when it entered review).
    entered_at timestamptz not null,
    state merge_queue_state not null default 'waiting',
    state_since timestamptz not null default now(),
    -- The head whose batch this item is tested in (the head names itself).
    batch_head bigint references work_items (id) on delete set null,
    -- The commit under test or being merged, when there is one.
    tested_commit text
);

create index merge_queue_order_idx on merge_queue (lock_name, entered_at, item_id);
create index merge_queue_batch_head_idx on merge_queue (batch_head) where batch_head is not null;

create function damascus_merge_queue_lock(p_repository text, p_branch text) returns text
language sql immutable as $$
    select 'merge-queue ' || p_repository || ' ' || p_branch
$$;

-- Entering review enters the queue: the row, the lock gate (created once per item and
-- reused when it re-enters), and the event. Named so that it fires before
-- work_items_spawn_job (triggers of one event fire in name order), which then takes
-- the lock or leaves the item waiting.
create function damascus_enter_merge_queue() returns trigger
language plpgsql as $$
declare
    v_repository text;
    v_branch text;
    v_lock text;
begin
    select repository, default_branch into v_repository, v_branch
    from projects where id = new.project_id;
    v_lock := damascus_merge_queue_lock(v_repository, v_branch);
    insert into merge_queue (item_id, repository, base_branch, lock_name, entered_at)
    values (new.id, v_repository, v_branch, v_lock, new.phase_entered_at)
    on conflict (item_id) do nothing;
    if not exists (
        select 1 from coordination_gates
        where item_id = new.id and kind = 'lock' and lock_name = v_lock
    ) then
        insert into coordination_gates (item_id, kind, lock_name) values (new.id, 'lock', v_lock);
    end if;
    insert into events_outbox (item_id, project_id, kind, payload)
    values (new.id, new.project_id, 'merge_queue.entered', jsonb_build_object(
        'repository', v_repository, 'base_branch', v_branch,
        'position', (select count(*) from merge_queue q
                     where q.lock_name = v_lock
                       and (q.entered_at, q.item_id) <= (new.phase_entered_at, new.id))));
    return null;
end;
$$;

create trigger work_items_enter_merge_queue after update of phase on work_items
    for each row when (new.phase = 'review' and old.phase is distinct from 'review')
    execute function damascus_enter_merge_queue();
create trigger work_items_enter_merge_queue_on_insert after insert on work_items
    for each row when (new.phase = 'review')
    execute function damascus_enter_merge_queue();

-- Leaving review leaves the queue, with the event; a batch this item led goes back to
-- waiting (its followers not recorded with it stay queued, in their places).
create function damascus_leave_merge_queue() returns trigger
language plpgsql as $$
begin
    delete from merge_queue where item_id = new.id;
    if found then
        update merge_queue set state = 'waiting', state_since = now(), batch_head = null,
            tested_commit = null
        where batch_head = new.id;
        insert into events_outbox (item_id, project_id, kind, payload)
        values (new.id, new.project_id, 'merge_queue.left', jsonb_build_object('to', new.phase));
    end if;
    return null;
end;
$$;

create trigger work_items_leave_merge_queue after update of phase on work_items
    for each row when (old.phase = 'review' and new.phase is distinct from 'review')
    execute function damascus_leave_merge_queue();

-- As in migration 10, except for the order: the merge queue's lock comes first. An item
-- that waits for its queue then holds none of its own named locks meanwhile (it would
-- hold them for as long as the queue ahead of it takes); one at the head may wait for
-- a named lock that an item of another repository holds, which ends when that item
-- leaves review. The order is still one total order, so ordered acquisition cannot
-- deadlock.
create or replace function damascus_take_locks(p_item bigint) returns boolean
language plpgsql as $$
declare
    v_gate record;
begin
    for v_gate in
        select g.id, g.lock_name from coordination_gates g
        where g.item_id = p_item and g.kind = 'lock'
        order by (g.lock_name like 'merge-queue %') desc, g.lock_name
    loop
        loop
            insert into named_locks (name, item_id) values (v_gate.lock_name, p_item)
            on conflict (name) do nothing;
            exit when exists (
                select 1 from named_locks where name = v_gate.lock_name and item_id = p_item
            );
            perform 1 from named_locks where name = v_gate.lock_name for key share;
            if found then
                return false;
            end if;
        end loop;
        update coordination_gates set opened_at = now(), opened_by = 'holds the lock'
        where id = v_gate.id and opened_at is null;
    end loop;
    return true;
end;
$$;

-- The waiters of a lock, by its name (damascus_lock_waiters). Every item that enters
-- review inserts a closed lock gate for its queue and opens it at once when it takes the
-- lock, so coordination_gates_closed_idx (by item) fills with dead entries between
-- vacuums, and a lookup of the waiters through it read them all (the bench's review
-- jobs cost twice as much at 20,000 queued as at 2,000). By name, a lookup reads only
-- that lock's entries.
-- coordination_gates_closed_idx goes: coordination_gates_item_idx (migration 11) serves
-- the lookups by item, and with both partial indexes on "opened_at is null" the planner
-- took the one by item for the lookup by name, since after an analyze both look empty.
create index coordination_gates_lock_waiters_idx on coordination_gates (lock_name)
    where kind = 'lock' and opened_at is null;
drop index coordination_gates_closed_idx;

-- As in migration 14, with the common case first: every item that enters review now
-- takes a lock (its queue's), so every item that leaves review releases one, and most
-- releases have nobody waiting. That case is one lookup. The waiters are read through
-- damascus_lock_waiters in FROM, where PostgreSQL inlines it (in a WHERE ... IN, it
-- read every row of work_items).
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
        update work_items set updated_at = now() where id = v_waiter;
        exit when exists (select 1 from named_locks where name = old.name);
    end loop;
    if not exists (select 1 from named_locks where name = old.name) then
        perform pg_notify('damascus_respawn', old.name);
    end if;
    return null;
end;
$$;

-- The items queued behind p_head that its batch may take, in queue order: in review
-- with no job (waiting for the queue's lock), held back by no other gate and no other
-- named lock, their project not paused.
create function damascus_merge_queue_followers(p_head bigint, p_limit integer)
returns setof bigint
language sql stable as $$
    select q.item_id
    from merge_queue head
    join merge_queue q on q.lock_name = head.lock_name
        and (q.entered_at, q.item_id) > (head.entered_at, head.item_id)
    join work_items i on i.id = q.item_id
    join projects p on p.id = i.project_id
    where head.item_id = p_head
      and i.phase = 'review' and not p.paused
      and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
      and not damascus_gates_hold(i.id, 'review')
      and not exists (
          select 1 from coordination_gates g
          where g.item_id = i.id and g.kind = 'lock' and g.lock_name <> q.lock_name
      )
    order by q.entered_at, q.item_id
    limit greatest(p_limit, 0)
$$;

-- For people at a psql prompt: every queue in order, with its position.
create view damascus_merge_queue as
select
    q.repository,
    q.base_branch,
    row_number() over (partition by q.lock_name order by q.entered_at, q.item_id) as position,
    q.item_id,
    p.name as project,
    i.title,
    q.state,
    q.state_since,
    q.batch_head,
    q.tested_commit,
    q.entered_at
from merge_queue q
join work_items i on i.id = q.item_id
join projects p on p.id = i.project_id;

-- Items already in review enter their queues, in the order they entered review.
insert into coordination_gates (item_id, kind, lock_name)
select i.id, 'lock', damascus_merge_queue_lock(p.repository, p.default_branch)
from work_items i join projects p on p.id = i.project_id
where i.phase = 'review';
insert into merge_queue (item_id, repository, base_branch, lock_name, entered_at)
select i.id, p.repository, p.default_branch,
       damascus_merge_queue_lock(p.repository, p.default_branch), i.phase_entered_at
from work_items i join projects p on p.id = i.project_id
where i.phase = 'review';
