-- Which coding agent builds a project's items, with which model and extra arguments,
-- and what each ledger row's tokens were priced at.
--
-- projects.agent: claude (the default, as before), codex, gemini, opencode, or command
-- (the project's own argv in agent_command, as a project with agent_command was
-- before). agent_args are appended to the argv Damascus builds for the agent.
alter table projects
    add column agent text not null default 'claude'
        constraint projects_agent_known
            check (agent in ('claude', 'codex', 'gemini', 'opencode', 'command')),
    add column agent_model text
        constraint projects_agent_model_present check (btrim(agent_model) <> ''),
    add column agent_args text[] not null default '{}';

update projects set agent = 'command' where agent_command is not null;

alter table projects
    add constraint projects_command_agent_has_argv
        check ((agent = 'command') = (agent_command is not null));

comment on column projects.agent is
    'The coding agent: claude, codex, gemini, opencode, or command (agent_command''s argv).';

-- tokens_in counts every input token, cached ones included; tokens_cached says how
-- many of them were read from the provider's cache (priced lower). price names the
-- price a row's dollars were computed at (model, figures, and where they came from);
-- null when the agent reported the dollars itself, or nothing was priced.
alter table cost_ledger
    add column tokens_cached bigint not null default 0
        constraint cost_ledger_tokens_cached_non_negative check (tokens_cached >= 0),
    add column price text;

comment on column cost_ledger.price is
    'The price the row''s USD were computed at from its tokens, or null when reported by the agent.';

-- The ledger insert of the verdicts' costs now keeps tokens_cached and price.

-- Records decided verdicts of items the caller has locked: the one place a verdict is
-- written. Each entry of p_ends names its item and carries what damascus-core's
-- `decide` made of the verdict (phase, resume_phase, phase_attempts, attempts_total),
-- the verdict and its reason, the phase's output (spec, test_command, branch, pr_url),
-- the item.phase_changed event's payload, the run's costs (from_phase, attempt,
-- cost_usd and the ledger rows in costs), and, when the item blocks, its question
-- (question, context, on_answer). p_only, when given, limits it to the entries whose
-- claim is in it. The item moves, its event and cost rows are written, and each
-- blocked item gets its open question and an item.blocked event. The spawn trigger
-- queues the next job of each item that moved into a working phase.
create or replace function damascus_record_verdicts(p_ends jsonb, p_only uuid[] default null)
returns void
language plpgsql as $$
begin
    with e as (
        select * from jsonb_to_recordset(p_ends) as e (
            claim uuid, item bigint, phase work_phase, resume_phase work_phase,
            phase_attempts integer, attempts_total integer, verdict verdict_kind,
            reason text, spec jsonb, test_command text, branch text, pr_url text,
            payload jsonb, cost_usd numeric)
        where p_only is null or e.claim = any (p_only)
    ), moved as (
        update work_items w
        set phase = e.phase, resume_phase = e.resume_phase,
            phase_attempts = e.phase_attempts, attempts_total = e.attempts_total,
            last_verdict = e.verdict, last_verdict_reason = e.reason,
            spec = coalesce(e.spec, w.spec),
            test_command = coalesce(e.test_command, w.test_command),
            branch = coalesce(e.branch, w.branch), pr_url = coalesce(e.pr_url, w.pr_url),
            cost_usd = w.cost_usd + coalesce(e.cost_usd, 0)
        from e
        where w.id = e.item
        returning w.id, w.project_id, e.payload
    )
    insert into events_outbox (item_id, project_id, kind, payload)
    select moved.id, moved.project_id, 'item.phase_changed', moved.payload from moved;
    insert into cost_ledger (item_id, phase, attempt, source, model, tokens_in, tokens_out,
                             tokens_cached, price, usd)
    select e.item, e.from_phase, e.attempt, c.source, c.model, c.tokens_in, c.tokens_out,
           coalesce(c.tokens_cached, 0), c.price, c.usd
    from jsonb_to_recordset(p_ends) as e (
             claim uuid, item bigint, from_phase work_phase, attempt integer, costs jsonb)
         cross join lateral jsonb_to_recordset(coalesce(e.costs, '[]')) as c (
             source cost_source, model text, tokens_in bigint, tokens_out bigint,
             tokens_cached bigint, price text, usd numeric)
    where p_only is null or e.claim = any (p_only);
    if not exists (select 1 from jsonb_array_elements(p_ends) x where x ? 'question'
                   and jsonb_typeof(x -> 'question') = 'string') then
        return;
    end if;
    with q as (
        select e.item, e.resume_phase, e.on_answer, e.question, coalesce(e.context, '') as context
        from jsonb_to_recordset(p_ends) as e (
            claim uuid, item bigint, resume_phase work_phase, on_answer work_phase,
            question text, context text)
        where e.question is not null and (p_only is null or e.claim = any (p_only))
    ), opened as (
        insert into human_issues (item_id, phase, on_answer, question, context)
        select q.item, q.resume_phase, q.on_answer, q.question, q.context from q
        on conflict (item_id) where status = 'open' do nothing
        returning human_issues.item_id, human_issues.id
    )
    insert into events_outbox (item_id, project_id, kind, payload)
    select q.item, w.project_id, 'item.blocked',
           jsonb_build_object('human_issue_id', opened.id, 'question', q.question,
                              'resume_phase', q.resume_phase, 'on_answer', q.on_answer)
    from q
    join work_items w on w.id = q.item
    left join opened on opened.item_id = q.item
    order by q.item;
end;
$$;
