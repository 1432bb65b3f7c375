-- Delivery state per webhook. events_outbox.delivered_at says an event reached every
-- configured webhook; until then, each webhook that already took it has a row here, so
-- a retry after another webhook failed goes only to the webhooks still missing it.
-- Without this, one webhook that is down made every other webhook receive each event
-- again on every retry.
--
-- A webhook is named by a key derived from its URL (a hash: URLs can hold tokens), so
-- the rows of a webhook removed from the configuration are simply never read again.
create table event_webhook_deliveries (
    event_id bigint not null references events_outbox (id) on delete cascade,
    webhook text not null
        constraint event_webhook_deliveries_webhook_key check (webhook ~ '^[0-9a-f]{32}$'),
    delivered_at timestamptz not null default now(),
    primary key (event_id, webhook)
);
