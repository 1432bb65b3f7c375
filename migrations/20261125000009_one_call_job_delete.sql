-- Ending a job deletes its queue row and frees its slot; one call instead of two round
-- trips on the hot path of every finish.
create function damascus_delete_job(p_job uuid) returns void
language plpgsql as $$
begin
    perform damascus_free_slot(p_job);
    perform mq_delete(array[p_job]);
end;
$$;
