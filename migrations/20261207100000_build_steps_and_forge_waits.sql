-- Paid work is done once: what a build finished is kept with its item, and a forge's
-- rate limit is waited out by every worker process alike.

-- The steps a build finished, one row per item: the commit holding the agent's work
-- (`committed`), the commit pushed to the item's branch (`pushed`) and the pull request
-- (`pr_url`). A build run that finds its item's row resumes after the last step it
-- names: a forge error after the agent ran retries the forge call, never the agent.
-- The row is forgotten when the agent's output is wanted again (a failed build or
-- review: the item's last verdict becomes a counted fail) and when the item leaves the
-- build and review phases for good (merged, cancelled) or goes back to spec.
create table build_steps (
    item_id bigint primary key references work_items (id) on delete cascade,
    committed text not null
        constraint build_steps_committed_is_a_commit check (committed ~ '^[0-9a-f]{40,64}$'),
    pushed text
        constraint build_steps_pushed_is_a_commit check (pushed ~ '^[0-9a-f]{40,64}$'),
    pr_url text,
    -- The claim that recorded the newest step, for a person reading psql.
    claim_token uuid not null,
    updated_at timestamptz not null default now(),
    constraint build_steps_pr_after_push check (pr_url is null or pushed is not null)
);

comment on table build_steps is
    'What a build of the item finished (commit, push, pull request), so a retry resumes at the step that failed.';

create function damascus_forget_build_steps() returns trigger
language plpgsql as $$
begin
    delete from build_steps where item_id = new.id;
    return null;
end;
$$;

-- Fires on a counted fail (attempts_total moves and the last verdict is fail: a build
-- that failed, a review whose tests failed) and on a move to a phase where the build's
-- output is no longer wanted. Neither a transient error nor a question changes either
-- column that way, so a build blocked on a forge's refusal keeps its steps for the run
-- after the answer.
create trigger work_items_forget_build_steps after update of phase, attempts_total on work_items
    for each row
    when ((new.attempts_total <> old.attempts_total and new.last_verdict = 'fail')
          or (new.phase <> old.phase and new.phase in ('merged', 'cancelled', 'spec', 'intake')))
    execute function damascus_forget_build_steps();

-- A forge's "come back later", per forge host and token (`forge` is the host and a
-- fingerprint of the token, never the token): no worker process calls that forge with
-- that token before `until`. Written by the phase that was told, read before every
-- forge call.
create table forge_waits (
    forge text primary key
        constraint forge_waits_forge_present check (btrim(forge) <> ''),
    host text not null,
    until timestamptz not null,
    reason text not null,
    recorded_at timestamptz not null default now()
);

comment on table forge_waits is
    'Rate-limit deadlines per forge host and token: no call to that forge before until.';

-- The last write turn taken per forge host and token, across every worker process:
-- a write (GitHub asks for one at a time per token, a second apart) takes the next
-- turn, `gap` after the last one, and waits for it. One row per forge, updated in
-- place; the upsert's row lock orders concurrent takers.
create table forge_write_turns (
    forge text primary key
        constraint forge_write_turns_forge_present check (btrim(forge) <> ''),
    last_turn_at timestamptz not null
);

comment on table forge_write_turns is
    'When the latest write turn per forge host and token starts: the next write goes a gap after it.';
