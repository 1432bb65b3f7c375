-- The coding agent's own session per item, so that a rebuild continues the
-- conversation the agent had (what it tried, what failed) with only what is new, on
-- the host and in the worktree where that session lives.
create table agent_sessions (
    item_id bigint primary key references work_items (id) on delete cascade,
    -- Which agent the session belongs to (`claude`).
    agent text not null
        constraint agent_sessions_agent_present check (btrim(agent) <> ''),
    session_id text not null
        constraint agent_sessions_session_present check (btrim(session_id) <> ''),
    -- Where it can be continued: the session's files live in the item's HOME on this
    -- host, and the agent resumes only in the worktree it worked in.
    host text not null,
    worktree text not null,
    claim_token uuid not null,
    updated_at timestamptz not null default now()
);

comment on table agent_sessions is
    'The coding agent''s session per item (id, host, worktree), for a rebuild to continue it.';
