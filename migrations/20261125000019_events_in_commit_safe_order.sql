-- A stream of events with no gaps. Event ids are taken at insert, not at commit, so a
-- reader that follows `id > last` skips an event whose transaction commits after a
-- higher id was read. Each event now carries the id of the transaction that wrote it;
-- readers hand out only events whose transaction is older than every transaction still
-- running (`pg_snapshot_xmin(pg_current_snapshot())`), in (txid, id) order. No event can
-- appear later below that line, so a cursor at the last event handed out misses nothing.

alter table events_outbox add column txid xid8 not null default pg_current_xact_id();

create index events_outbox_txid_idx on events_outbox (txid, id);

comment on column events_outbox.txid is
    'The transaction that wrote the event: streams read in (txid, id) order, up to the oldest transaction still running.';

-- Events after the event `p_after` (0: from the start) in a gap-free order, up to
-- p_limit. When `p_after` is gone (pruned), it continues after that id.
create function damascus_events_after(p_after bigint, p_limit integer)
returns setof events_outbox
language sql stable as $$
    with settled as (select pg_snapshot_xmin(pg_current_snapshot()) as below),
         cursor as (
             select coalesce(
                 (select e.txid from events_outbox e where e.id = p_after),
                 -- A cursor that is gone: everything settled after its id.
                 '0'::xid8
             ) as txid
         )
    select e.* from events_outbox e, settled, cursor
    where e.txid < settled.below
      and (e.txid, e.id) > (cursor.txid, p_after)
      and (cursor.txid <> '0'::xid8 or e.id > p_after)
    order by e.txid, e.id
    limit p_limit
$$;

-- The cursor a new reader starts at to see only what happens from now on: the last
-- event in gap-free order that is settled (0 when there is none).
create function damascus_events_head()
returns bigint
language sql stable as $$
    select coalesce(
        (select e.id from events_outbox e
         where e.txid < pg_snapshot_xmin(pg_current_snapshot())
         order by e.txid desc, e.id desc limit 1),
        0)
$$;
