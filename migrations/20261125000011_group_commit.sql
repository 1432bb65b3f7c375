-- Group commit of finishes: a worker ends several claims in one transaction, so the
-- jobs of a batch are deleted in one call. Same meaning as damascus_delete_job for
-- each of them (free or remove the slot, delete the queue row, its payload and, by
-- cascade, its damascus_jobs row), with one wake-up for the whole batch. The queue
-- rows are deleted directly: sqlxmq's mq_delete only adds a NOTIFY for ordered
-- messages, and Damascus never enqueues ordered ones.
create function damascus_delete_jobs(p_jobs uuid[]) returns void
language plpgsql as $$
begin
    delete from damascus_slots s
    using damascus_queue_settings q
    where s.job_id = any (p_jobs) and s.slot > q.concurrency;
    update damascus_slots
    set job_id = null, worker_id = null, claim_token = null, claimed_at = null, lease_until = null
    where job_id = any (p_jobs);
    -- A worker waiting for a free slot (the cap is reached) wakes at once.
    perform pg_notify('mq_' || damascus_job_channel(), '');
    delete from mq_msgs where id = any (p_jobs);
    delete from mq_payloads where id = any (p_jobs);
end;
$$;

-- Slot rows change on every claim and every end of a claim. With no index on a column
-- that changes (job_id, claim_token), each change is a HOT update inside the slot
-- table's few pages: no index entry written, none left behind to vacuum. The table
-- holds one row per slot of the cap, so finding a claim or a job by scanning it costs
-- less than keeping an index. That a job or a claim token is held by one slot at most
-- stays true by construction: damascus_claim takes slots and queue rows FOR UPDATE SKIP
-- LOCKED and mints each token with gen_random_uuid(). Every path that deletes a queue
-- row frees its slot first (damascus_delete_job, damascus_delete_jobs) or only deletes
-- rows no slot names (pausing a project), so the foreign key's ON DELETE SET NULL had
-- nothing left to do; a slot naming a vanished job is reclaimed when its lease ends.
alter table damascus_slots
    drop constraint damascus_slots_claim_token_key,
    drop constraint damascus_slots_job_id_key,
    drop constraint damascus_slots_job_id_fkey;

-- Nothing listens on damascus_events: the API's event streams read the outbox by id
-- every 250 ms. A NOTIFY per event only made every transaction that writes an event
-- take PostgreSQL's cluster-wide notification lock through its commit, which
-- serialises those commits (and their WAL flushes) across all sessions.
drop trigger events_outbox_notify on events_outbox;
drop function damascus_notify_event();

-- Finding an item's gates (releasing its locks, listing them, the cascade when an
-- item is deleted) reads this index instead of the whole table.
create index coordination_gates_item_idx on coordination_gates (item_id);

-- As before (migration 3), but the slots are locked in slot order first: a group
-- commit locks several of a worker's slots in slot order, and a keep-alive that
-- updated them in the table's physical order (which in-place updates shuffle) could
-- hold one the group wants while waiting for one the group holds.
create or replace function damascus_keep_alive(p_tokens uuid[], p_lease interval)
returns setof uuid
language plpgsql as $$
begin
    return query
    with locked as (
        select s.slot from damascus_slots s
        where s.claim_token = any (p_tokens)
        order by s.slot
        for update
    ), held as (
        update damascus_slots s
        set lease_until = now() + p_lease
        from locked
        where s.slot = locked.slot
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
