-- Webhooks are data: every process delivers to the same registered set, each (event,
-- webhook) pair has a delivery state of its own, so a webhook that is down delays only
-- itself, and what may be pruned is decided here, not by each process.

create table webhooks (
    id bigint generated always as identity primary key,
    name text not null unique
        constraint webhooks_name_shape check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    url text not null
        constraint webhooks_url_http check (url ~ '^https?://'),
    -- Standard Webhooks signing secret: whsec_ and the base64 of the key.
    secret text not null
        constraint webhooks_secret_shape check (secret ~ '^whsec_[A-Za-z0-9+/=]+$'),
    -- The event kinds it receives; null: every kind.
    event_kinds text[],
    max_attempts integer not null default 10
        constraint webhooks_max_attempts_range check (max_attempts between 1 and 100),
    created_at timestamptz not null default now()
);

comment on table webhooks is
    'Where events are delivered (signed, Standard Webhooks); damascus webhook add|list|remove|test|redrive.';

create type webhook_delivery_state as enum ('pending', 'retrying', 'delivered', 'dead');

create table webhook_deliveries (
    webhook_id bigint not null references webhooks (id) on delete cascade,
    event_id bigint not null references events_outbox (id) on delete cascade,
    state webhook_delivery_state not null default 'pending',
    attempts integer not null default 0
        constraint webhook_deliveries_attempts_non_negative check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    last_status integer,
    last_error text,
    updated_at timestamptz not null default now(),
    primary key (webhook_id, event_id)
);

-- What each webhook still has to send, in the order it sends it.
create index webhook_deliveries_undelivered_idx on webhook_deliveries (webhook_id, event_id)
    where state in ('pending', 'retrying');
create index webhook_deliveries_event_idx on webhook_deliveries (event_id);

comment on table webhook_deliveries is
    'One row per (webhook, event): pending, retrying (attempts, next_attempt_at, last_status, last_error), delivered or dead.';

-- Every event gets a delivery per registered webhook that wants its kind, in the
-- transaction that writes the event.
create function damascus_events_fan_out() returns trigger
language plpgsql as $$
begin
    insert into webhook_deliveries (webhook_id, event_id)
    select w.id, e.id
    from inserted e join webhooks w on w.event_kinds is null or e.kind = any (w.event_kinds);
    return null;
end;
$$;

create trigger events_outbox_fan_out
    after insert on events_outbox
    referencing new table as inserted
    for each statement execute function damascus_events_fan_out();

-- The relay's old per-event state is replaced by the rows above.
drop table event_webhook_deliveries;
drop index events_outbox_pending_idx;
alter table events_outbox
    drop constraint events_outbox_delivered_or_dead,
    drop column delivered_at,
    drop column delivery_attempts,
    drop column next_delivery_at,
    drop column last_delivery_error,
    drop column dead_at;

-- Retention in one place: an event may go only when it is older than p_age, its item is
-- finished (or gone), and every webhook has it delivered or dead.
create function damascus_prune_events(p_age interval) returns bigint
language sql as $$
    with gone as (
        delete from events_outbox e
        where e.created_at < now() - p_age
          and not exists (select 1 from work_items i
                          where i.id = e.item_id and i.phase not in ('merged', 'cancelled'))
          and not exists (select 1 from webhook_deliveries d
                          where d.event_id = e.id and d.state in ('pending', 'retrying'))
        returning 1
    )
    select count(*) from gone
$$;

-- Per webhook: what is waiting, failing, given up, and how old the oldest undelivered
-- event is.
create view damascus_webhooks as
select w.name,
       w.event_kinds,
       w.max_attempts,
       count(*) filter (where d.state = 'pending') as pending,
       count(*) filter (where d.state = 'retrying') as retrying,
       count(*) filter (where d.state = 'dead') as dead,
       count(*) filter (where d.state = 'delivered') as delivered,
       now() - min(e.created_at) filter (where d.state in ('pending', 'retrying'))
           as oldest_undelivered_age,
       (array_agg(d.last_error order by d.updated_at desc)
           filter (where d.state in ('retrying', 'dead')))[1] as last_error
from webhooks w
left join webhook_deliveries d on d.webhook_id = w.id
left join events_outbox e on e.id = d.event_id
group by w.id
order by w.name;
