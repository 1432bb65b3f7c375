-- A lock hand-over never waits for a waiter's row (it runs inside the releasing
-- transaction, and waiting there could deadlock), so a waiter whose row is busy at
-- that moment is passed over. Until now that waiter got the free lock only at the
-- reapers' next respawn pass (every 15 s by default). Now the hand-over says so on the
-- damascus_respawn channel, delivered when the release commits, and each worker runs
-- its respawn pass at once; that pass may wait for the busy row, since it holds no
-- other lock.

-- The items waiting for lock p_name that its release by item p_released_by may wake:
-- in review, the lock's gate closed, no job yet.
create function damascus_lock_waiters(p_name text, p_released_by bigint)
returns setof bigint
language sql stable as $$
    select g.item_id from coordination_gates g
    join work_items i on i.id = g.item_id
    where g.kind = 'lock' and g.lock_name = p_name and g.opened_at is null
      and i.phase = 'review' and i.id <> p_released_by
      and not exists (select 1 from damascus_jobs j where j.item_id = i.id)
$$;

create or replace function damascus_hand_over_lock() returns trigger
language plpgsql as $$
declare
    v_waiter bigint;
begin
    for v_waiter in
        select i.id from work_items i
        where i.id in (select damascus_lock_waiters(old.name, old.item_id))
        order by i.phase_entered_at, i.id
        for update skip locked
    loop
        update work_items set updated_at = now() where id = v_waiter;
        exit when exists (select 1 from named_locks where name = old.name);
    end loop;
    if not exists (select 1 from named_locks where name = old.name)
       and exists (select 1 from damascus_lock_waiters(old.name, old.item_id)) then
        perform pg_notify('damascus_respawn', old.name);
    end if;
    return null;
end;
$$;
