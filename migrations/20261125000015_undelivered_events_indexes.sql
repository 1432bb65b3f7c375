-- `damascus status`, /v1/stats and /metrics count the events the webhook relay keeps
-- failing to deliver and those it gave up on. These partial indexes hold only those
-- (a handful, when anything), so the counts never read the whole outbox.
create index events_outbox_retrying_idx on events_outbox (next_delivery_at)
    where delivered_at is null and dead_at is null and delivery_attempts > 0;
create index events_outbox_dead_idx on events_outbox (dead_at) where dead_at is not null;
