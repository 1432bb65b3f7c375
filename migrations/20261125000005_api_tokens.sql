-- Bearer tokens for the HTTP API. A token is `dmsc_<id>_<secret>`: the id finds the row,
-- and the secret is compared, in constant time, with the SHA-256 stored here. The
-- secret itself is shown once, when the token is created, and never stored.
create table api_tokens (
    id bigint generated always as identity primary key,
    name text not null unique
        constraint api_tokens_name_format check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    secret_sha256 bytea not null
        constraint api_tokens_hash_length check (length(secret_sha256) = 32),
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- Any new event wakes the API's live streams at once (they poll as a safety net).
create function damascus_notify_event() returns trigger
language plpgsql as $$
begin
    perform pg_notify('damascus_events', new.id::text);
    return null;
end;
$$;

create trigger events_outbox_notify after insert on events_outbox
    for each row execute function damascus_notify_event();
