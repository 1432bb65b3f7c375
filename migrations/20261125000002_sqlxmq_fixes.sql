-- Fixes to the queue functions copied from sqlxmq 0.6.0. The copied migrations stay
-- byte-for-byte as sqlxmq shipped them, so every correction lives here, replacing a
-- function with the same signature, result columns and meaning.


-- What was wrong: the body called uuid_nil() unqualified, and a SQL function's body is
-- parsed with the caller's search_path each time it is inlined. The partial index
-- mq_msgs_channel_name_channel_args_attempt_at_idx calls this function in its
-- predicate, so every session without public on its search_path failed with "function
-- uuid_nil() does not exist" when it evaluated that predicate: autovacuum (search_path
-- '') could never ANALYZE mq_msgs, so the planner never had statistics for it, and
-- restoring a pg_dump (also '') could not rebuild the index or insert into the table.
-- Why this is correct: the nil UUID is a constant, so comparing with its literal gives
-- the same result for every input, leaves nothing to look up by name (only pg_catalog's
-- uuid operators, which are always on the path), and keeps the function IMMUTABLE and
-- inlinable, so the rows of the partial index are unchanged and need no reindex. The
-- other function in an index predicate, uuid_nil() itself, is a C function bound by
-- OID, and no other index predicate, index expression or statistics object calls a
-- function written in SQL.
CREATE OR REPLACE FUNCTION mq_uuid_exists(
    id UUID
) RETURNS BOOLEAN AS $$
    SELECT id IS NOT NULL AND id != '00000000-0000-0000-0000-000000000000'::uuid
$$ LANGUAGE SQL IMMUTABLE;


-- New internal helper: the head of every channel, that is the smallest attempt_at
-- among the messages of each (channel_name, channel_args) that are not waiting for an
-- earlier ordered message, restricted to channel_names unless that is NULL. attempt_at
-- is NULL for a head whose channel only holds messages that ran out of attempts.
--
-- It is a "loose index scan" over mq_msgs_channel_name_channel_args_attempt_at_idx: each
-- step descends the index once to the first entry after the previous channel, and that
-- entry is the next channel's head because the index orders attempt_at ascending (NULLs
-- last) within a channel. Its cost therefore grows with the number of distinct
-- channels, not with the number of messages. Every scan repeats the index predicate
-- (id != uuid_nil() AND NOT mq_uuid_exists(after_message_id)) so that the planner
-- proves the partial index applies, and orders by all three index columns so that no
-- other index gives that order without a sort. When channel_names is given, each name
-- is walked on its own (channel_name = name AND channel_args > previous), so that every
-- step's bounds are index conditions and no step reads the entries of other channels.
--
-- It is PL/pgSQL, not an inlinable SQL function, so that callers plan it as one cheap
-- function scan: inlined, the recursive CTE's estimates (ten times its first step for
-- every recursion) inflated the cost of the whole mq_poll UPDATE until the planner could
-- no longer tell a primary-key lookup of the chosen messages from a sequential scan of
-- mq_msgs, and picked the scan. force_custom_plan makes each call plan with the current
-- size of mq_msgs: a cached generic plan made while the queue was nearly empty uses a
-- sequential scan and a sort for every step, and would keep doing so after a burst of
-- messages, until the next ANALYZE.
CREATE FUNCTION mq_channel_heads(channel_names TEXT[])
RETURNS TABLE(name TEXT, args TEXT, attempt_at TIMESTAMPTZ) AS $$
BEGIN
    IF channel_names IS NULL THEN
        RETURN QUERY WITH RECURSIVE heads(channel_name, channel_args, attempt_at) AS (
            (
                SELECT mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                FROM mq_msgs
                WHERE mq_msgs.id != uuid_nil()
                AND NOT mq_uuid_exists(mq_msgs.after_message_id)
                ORDER BY mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                LIMIT 1
            )
            UNION ALL
            SELECT next_head.channel_name, next_head.channel_args, next_head.attempt_at
            FROM heads
            CROSS JOIN LATERAL (
                SELECT mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                FROM mq_msgs
                WHERE mq_msgs.id != uuid_nil()
                AND NOT mq_uuid_exists(mq_msgs.after_message_id)
                AND (mq_msgs.channel_name, mq_msgs.channel_args)
                    > (heads.channel_name, heads.channel_args)
                ORDER BY mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                LIMIT 1
            ) AS next_head
        )
        SELECT heads.channel_name, heads.channel_args, heads.attempt_at
        FROM heads;
    ELSE
        RETURN QUERY WITH RECURSIVE heads(channel_name, channel_args, attempt_at) AS (
            SELECT first_head.channel_name, first_head.channel_args, first_head.attempt_at
            FROM (
                SELECT DISTINCT wanted.channel_name
                FROM UNNEST(channel_names) AS wanted(channel_name)
            ) AS wanted
            CROSS JOIN LATERAL (
                SELECT mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                FROM mq_msgs
                WHERE mq_msgs.id != uuid_nil()
                AND NOT mq_uuid_exists(mq_msgs.after_message_id)
                AND mq_msgs.channel_name = wanted.channel_name
                ORDER BY mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                LIMIT 1
            ) AS first_head
            UNION ALL
            SELECT next_head.channel_name, next_head.channel_args, next_head.attempt_at
            FROM heads
            CROSS JOIN LATERAL (
                SELECT mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                FROM mq_msgs
                WHERE mq_msgs.id != uuid_nil()
                AND NOT mq_uuid_exists(mq_msgs.after_message_id)
                AND mq_msgs.channel_name = heads.channel_name
                AND mq_msgs.channel_args > heads.channel_args
                ORDER BY mq_msgs.channel_name, mq_msgs.channel_args, mq_msgs.attempt_at
                LIMIT 1
            ) AS next_head
        )
        SELECT heads.channel_name, heads.channel_args, heads.attempt_at
        FROM heads;
    END IF;
END;
$$ LANGUAGE plpgsql STABLE ROWS 10 SET plan_cache_mode = force_custom_plan;


-- What was wrong: the original read every ready message (attempt_at <= NOW()) of the
-- requested channels and grouped them by channel on every poll, so each poll cost time
-- in proportion to the backlog (about 5 ms per poll with 20,000 ready messages).
-- Why this is correct: a channel has a ready message exactly when its head (its
-- smallest non-NULL attempt_at, see mq_channel_heads) is <= NOW(), since a NULL
-- attempt_at never compares as ready; so the same set of channels is chosen from, at
-- random, batch_size at a time, while reading one index entry per channel.
CREATE OR REPLACE FUNCTION mq_active_channels(channel_names TEXT[], batch_size INT)
RETURNS TABLE(name TEXT, args TEXT) AS $$
    SELECT heads.name, heads.args
    FROM mq_channel_heads(channel_names) AS heads
    WHERE heads.attempt_at <= NOW()
    ORDER BY RANDOM()
    LIMIT batch_size
$$ LANGUAGE SQL STABLE;


-- Main entry-point for job runner: pulls a batch of messages from the queue.
--
-- What was wrong, twice. First, when nothing was ready, the wait-time query took
-- MIN(attempt_at) over every message of the requested channels, reading the whole
-- backlog of delayed messages on every idle poll. The minimum over all messages is the
-- minimum over each channel's smallest attempt_at, which is what mq_channel_heads
-- returns (MIN ignores NULLs in both forms, and gives NULL when there are no messages),
-- so the new query gives the same wait time from one index entry per channel.
-- Second, a runner's connection polls an empty queue many times, after which PL/pgSQL
-- may keep a generic plan of the UPDATE made for a one-row mq_msgs: sequential scans
-- joined by nested loops. After a burst of 20,000 messages that plan took 84 seconds
-- for one poll (measured on PostgreSQL 15), and nothing replaced it until an ANALYZE,
-- which autovacuum could not run (see mq_uuid_exists above). force_custom_plan plans
-- each poll with its actual arguments and the current size of mq_msgs, which is what
-- the default mode already did on a busy queue, where the generic plan looks dearer.
-- Everything else is the 20220208120856_sqlxmq_fix_concurrent_poll version unchanged:
-- it picks the ready messages of the active channels in attempt_at order, counts the
-- attempt and schedules the retry with a doubled backoff, and rechecks attempt_at after
-- taking the row lock so that concurrent polls do not run one message twice.
CREATE OR REPLACE FUNCTION mq_poll(channel_names TEXT[], batch_size INT DEFAULT 1)
RETURNS TABLE(
    id UUID,
    is_committed BOOLEAN,
    name TEXT,
    payload_json TEXT,
    payload_bytes BYTEA,
    retry_backoff INTERVAL,
    wait_time INTERVAL
) AS $$
BEGIN
    RETURN QUERY UPDATE mq_msgs
    SET
        attempt_at = CASE WHEN mq_msgs.attempts = 1 THEN NULL ELSE NOW() + mq_msgs.retry_backoff END,
        attempts = mq_msgs.attempts - 1,
        retry_backoff = mq_msgs.retry_backoff * 2
    FROM (
        SELECT
            msgs.id
        FROM mq_active_channels(channel_names, batch_size) AS active_channels
        INNER JOIN LATERAL (
            SELECT mq_msgs.id FROM mq_msgs
            WHERE mq_msgs.id != uuid_nil()
            AND mq_msgs.attempt_at <= NOW()
            AND mq_msgs.channel_name = active_channels.name
            AND mq_msgs.channel_args = active_channels.args
            AND NOT mq_uuid_exists(mq_msgs.after_message_id)
            ORDER BY mq_msgs.attempt_at ASC
            LIMIT batch_size
        ) AS msgs ON TRUE
        LIMIT batch_size
    ) AS messages_to_update
    LEFT JOIN mq_payloads ON mq_payloads.id = messages_to_update.id
    WHERE mq_msgs.id = messages_to_update.id
    AND mq_msgs.attempt_at <= NOW()
    RETURNING
        mq_msgs.id,
        mq_msgs.commit_interval IS NULL,
        mq_payloads.name,
        mq_payloads.payload_json::TEXT,
        mq_payloads.payload_bytes,
        mq_msgs.retry_backoff / 2,
        interval '0' AS wait_time;

    IF NOT FOUND THEN
        RETURN QUERY SELECT
            NULL::UUID,
            NULL::BOOLEAN,
            NULL::TEXT,
            NULL::TEXT,
            NULL::BYTEA,
            NULL::INTERVAL,
            MIN(heads.attempt_at) - NOW()
        FROM mq_channel_heads(channel_names) AS heads;
    END IF;
END;
$$ LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan;
