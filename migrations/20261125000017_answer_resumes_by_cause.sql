-- Where an answer resumes an item follows from why it stopped (damascus-core's
-- `on_answer`), decided when the question is asked and kept with it: a failed build or
-- review is rebuilt with the answer as guidance, anything else resumes the phase it
-- left. `phase` stays the phase the item left, which `damascus item retry` re-runs as it
-- is.
alter table human_issues add column on_answer work_phase;
update human_issues set on_answer = phase;
alter table human_issues
    alter column on_answer set not null,
    add constraint human_issues_on_answer_working
        check (on_answer in ('spec', 'build', 'review'));

-- A question inserted without it (from psql, say) resumes where the item left.
create function damascus_human_issue_on_answer() returns trigger
language plpgsql as $$
begin
    new.on_answer := coalesce(new.on_answer, new.phase);
    return new;
end;
$$;

create trigger human_issues_on_answer before insert on human_issues
    for each row execute function damascus_human_issue_on_answer();

-- How many full rounds (from the phase an answer resumes in to merged) each answer
-- grants at the least in total attempts, per project.
alter table projects
    add column rounds_per_answer integer not null default 1
        constraint projects_rounds_per_answer_range check (rounds_per_answer between 1 and 10);
