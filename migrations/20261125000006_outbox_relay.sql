-- The outbox relay: each event is delivered to the configured webhooks at least once.
-- A delivery claims events FOR UPDATE SKIP LOCKED and sets delivered_at in the same
-- transaction; a failure schedules the next try with backoff, and after too many the
-- event is parked as dead (dead_at) with its last error, never silently dropped.
alter table events_outbox
    add column delivery_attempts integer not null default 0
        constraint events_outbox_delivery_attempts_non_negative check (delivery_attempts >= 0),
    add column next_delivery_at timestamptz not null default now(),
    add column last_delivery_error text,
    add column dead_at timestamptz,
    add constraint events_outbox_delivered_or_dead check (delivered_at is null or dead_at is null);

drop index events_outbox_undelivered_idx;
create index events_outbox_pending_idx on events_outbox (next_delivery_at, id)
    where delivered_at is null and dead_at is null;
