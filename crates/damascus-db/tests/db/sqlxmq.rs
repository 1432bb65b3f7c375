//! The queue functions copied from sqlxmq, as `migrations/20261201000000_baseline.sql`
//! defines them: ANALYZE works without `public` on the search_path, polling keeps
//! sqlxmq's semantics, and a poll reads one index entry per channel instead of the whole
//! backlog.

use std::time::Duration;

use damascus_testdb::TestDatabase;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::types::Uuid;
use sqlx::{FromRow, PgConnection, Row};

/// One `mq_new_t`, with the same defaults as sqlxmq's `JobBuilder`.
struct Message {
    id: Uuid,
    channel_name: &'static str,
    channel_args: &'static str,
    delay: Duration,
    retries: i32,
    retry_backoff: Duration,
    commit_interval: Option<Duration>,
    ordered: bool,
}

impl Message {
    fn new(id: u128, channel_name: &'static str) -> Message {
        Message {
            id: Uuid::from_u128(id),
            channel_name,
            channel_args: "",
            delay: Duration::ZERO,
            retries: 4,
            retry_backoff: Duration::from_secs(1),
            commit_interval: None,
            ordered: false,
        }
    }
}

/// Inserts the message exactly as sqlxmq's `JobBuilder::spawn` does.
async fn spawn(conn: &mut PgConnection, message: &Message) {
    sqlx::query(
        "SELECT mq_insert(ARRAY[($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)::mq_new_t])",
    )
    .bind(message.id)
    .bind(message.delay)
    .bind(message.retries)
    .bind(message.retry_backoff)
    .bind(message.channel_name)
    .bind(message.channel_args)
    .bind(message.commit_interval)
    .bind(message.ordered)
    .bind("job")
    .bind(format!(r#"{{"id":"{}"}}"#, message.id))
    .bind(None::<&[u8]>)
    .execute(conn)
    .await
    .expect("mq_insert");
}

/// A row of `mq_poll`, as sqlxmq's runner reads it.
#[derive(Debug, sqlx::FromRow)]
struct Polled {
    id: Option<Uuid>,
    is_committed: Option<bool>,
    name: Option<String>,
    payload_json: Option<String>,
    retry_backoff: Option<PgInterval>,
    wait_time: Option<PgInterval>,
}

async fn poll(conn: &mut PgConnection, channels: Option<&[&str]>, batch_size: i32) -> Vec<Polled> {
    sqlx::query_as("SELECT * FROM mq_poll($1, $2)")
        .bind(channels)
        .bind(batch_size)
        .fetch_all(conn)
        .await
        .expect("mq_poll")
}

/// The ids of a poll that returned messages, sorted.
fn polled_ids(polled: &[Polled]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = polled
        .iter()
        .map(|p| p.id.expect("a message, not a wait-time row"))
        .collect();
    ids.sort();
    ids
}

/// The wait time of a poll that found nothing ready, which sqlxmq returns as one row
/// without a message.
fn wait_seconds(polled: &[Polled]) -> Option<f64> {
    assert_eq!(polled.len(), 1, "one wait-time row: {polled:?}");
    assert_eq!(polled[0].id, None, "nothing ready: {polled:?}");
    polled[0].wait_time.as_ref().map(seconds)
}

fn seconds(interval: &PgInterval) -> f64 {
    let days = f64::from(interval.months) * 30.0 + f64::from(interval.days);
    days * 86_400.0 + interval.microseconds as f64 / 1e6
}

async fn delete(conn: &mut PgConnection, ids: &[u128]) {
    let ids: Vec<Uuid> = ids.iter().copied().map(Uuid::from_u128).collect();
    sqlx::query("SELECT mq_delete($1)")
        .bind(ids)
        .execute(conn)
        .await
        .expect("mq_delete");
}

/// Autovacuum analyzes with an empty search_path and pg_restore restores with one, so
/// the index predicate on mq_msgs must not need `public` on the path. Before the fix,
/// each statement below failed with "function uuid_nil() does not exist".
#[tokio::test]
async fn mq_msgs_is_analyzed_and_written_without_public_on_the_search_path() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // The table is schema-qualified because pg_catalog alone cannot find it.
    sqlx::raw_sql("SET search_path = pg_catalog; ANALYZE public.mq_msgs")
        .execute(&mut *conn)
        .await
        .expect("ANALYZE mq_msgs with search_path pg_catalog");
    // Autovacuum's own setting, over every table, so that a later migration whose index
    // predicate depends on the search_path fails here too.
    sqlx::raw_sql("SET search_path = ''; ANALYZE")
        .execute(&mut *conn)
        .await
        .expect("ANALYZE the database with an empty search_path");
    // Still without public on the path: inserting evaluates the same predicate, as a
    // restore's COPY does.
    sqlx::raw_sql(
        "INSERT INTO public.mq_msgs (id, channel_name, channel_args) \
         VALUES ('00000000-0000-0000-0000-000000000001', 'restored', '')",
    )
    .execute(&mut *conn)
    .await
    .expect("insert into mq_msgs with an empty search_path");
    sqlx::raw_sql("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Ordered messages wait for their predecessor's deletion, delayed and leased messages
/// are not returned, and a poll that finds nothing returns the time until the next one.
#[tokio::test]
async fn poll_follows_order_delay_and_reports_the_wait_time() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    const HOUR: Duration = Duration::from_secs(3600);
    // A one-hour backoff keeps a polled message leased for the rest of the test, however
    // slowly it runs.
    let plain = Message {
        retry_backoff: HOUR,
        ..Message::new(1, "work")
    };
    let first = Message {
        channel_args: "item-1",
        ordered: true,
        retry_backoff: HOUR,
        ..Message::new(2, "ordered")
    };
    let second = Message {
        channel_args: "item-1",
        ordered: true,
        retry_backoff: HOUR,
        ..Message::new(3, "ordered")
    };
    let delayed = Message {
        delay: 2 * HOUR,
        ..Message::new(4, "work")
    };
    // Separate inserts, as separate spawns would be: the second ordered message follows
    // the first because the first is the channel's latest message by then.
    for message in [&plain, &first, &second, &delayed] {
        spawn(&mut conn, message).await;
    }

    let nothing = poll(&mut conn, Some(&["elsewhere"]), 10).await;
    assert_eq!(
        wait_seconds(&nothing),
        None,
        "no message at all: no wait time"
    );

    let ordered = poll(&mut conn, Some(&["ordered"]), 10).await;
    assert_eq!(polled_ids(&ordered), vec![first.id], "the second waits");
    let message = &ordered[0];
    assert_eq!(message.is_committed, Some(true));
    assert_eq!(message.name.as_deref(), Some("job"));
    let payload: serde_json::Value =
        serde_json::from_str(message.payload_json.as_deref().unwrap()).unwrap();
    assert_eq!(payload["id"], first.id.to_string());
    assert_eq!(message.retry_backoff.as_ref().map(seconds), Some(3600.0));
    assert_eq!(message.wait_time.as_ref().map(seconds), Some(0.0));

    let rest = poll(&mut conn, None, 10).await;
    assert_eq!(
        polled_ids(&rest),
        vec![plain.id],
        "not the leased or delayed ones"
    );

    // Both polled messages are leased for an hour, the second ordered one still waits
    // and the delayed one is due in two hours.
    let wait = wait_seconds(&poll(&mut conn, None, 10).await).unwrap();
    assert!((3000.0..=3600.0).contains(&wait), "wait {wait}");

    delete(&mut conn, &[1, 2]).await;
    let after_first = poll(&mut conn, None, 10).await;
    assert_eq!(polled_ids(&after_first), vec![second.id]);

    delete(&mut conn, &[3]).await;
    let wait = wait_seconds(&poll(&mut conn, None, 10).await).unwrap();
    assert!((6600.0..=7200.0).contains(&wait), "wait {wait}");
}

/// Each poll counts an attempt and doubles the backoff, a message that ran out of
/// attempts is never returned again, and a two-phase message waits for mq_commit.
#[tokio::test]
async fn poll_counts_attempts_and_waits_for_commit() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // No backoff, so that the retry is ready at once.
    let retried = Message {
        retries: 1,
        retry_backoff: Duration::ZERO,
        ..Message::new(1, "retried")
    };
    let backoff = Message {
        retry_backoff: Duration::from_secs(60),
        ..Message::new(2, "backoff")
    };
    let two_phase = Message {
        commit_interval: Some(Duration::from_secs(3600)),
        ..Message::new(3, "two-phase")
    };
    let expired = Message {
        commit_interval: Some(Duration::ZERO),
        ..Message::new(4, "expired")
    };
    for message in [&retried, &backoff, &two_phase, &expired] {
        spawn(&mut conn, message).await;
    }

    for _ in 0..2 {
        let polled = poll(&mut conn, Some(&["retried"]), 1).await;
        assert_eq!(polled_ids(&polled), vec![retried.id]);
    }
    let exhausted = poll(&mut conn, Some(&["retried"]), 1).await;
    assert_eq!(wait_seconds(&exhausted), None, "no attempt left");
    let row = sqlx::query("SELECT attempts, attempt_at IS NULL AS done FROM mq_msgs WHERE id = $1")
        .bind(retried.id)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(row.get::<i32, _>("attempts"), 0);
    assert!(row.get::<bool, _>("done"));

    let polled = poll(&mut conn, Some(&["backoff"]), 1).await;
    assert_eq!(polled[0].retry_backoff.as_ref().map(seconds), Some(60.0));
    let row = sqlx::query(
        "SELECT attempts, retry_backoff = interval '2 minutes' AS doubled, \
         attempt_at > NOW() AS leased FROM mq_msgs WHERE id = $1",
    )
    .bind(backoff.id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(row.get::<i32, _>("attempts"), 4);
    assert!(row.get::<bool, _>("doubled"));
    assert!(row.get::<bool, _>("leased"));

    // An elapsed commit interval means the spawning transaction never committed it:
    // sqlxmq's runner deletes such a message instead of running it.
    let polled = poll(&mut conn, Some(&["expired"]), 1).await;
    assert_eq!(polled_ids(&polled), vec![expired.id]);
    assert_eq!(polled[0].is_committed, Some(false));

    let uncommitted = poll(&mut conn, Some(&["two-phase"]), 1).await;
    let wait = wait_seconds(&uncommitted).unwrap();
    assert!((3000.0..=3600.0).contains(&wait), "wait {wait}");
    sqlx::query("SELECT mq_commit($1)")
        .bind(vec![two_phase.id])
        .execute(&mut *conn)
        .await
        .unwrap();
    let committed = poll(&mut conn, Some(&["two-phase"]), 1).await;
    assert_eq!(polled_ids(&committed), vec![two_phase.id]);
    assert_eq!(committed[0].is_committed, Some(true));
}

/// sqlxmq 0.6.0's definitions, kept as the reference the rewritten functions must agree
/// with: the ready channels, and the wait time when none is ready.
const SQLXMQ_ACTIVE_CHANNELS: &str = "
    SELECT channel_name, channel_args
    FROM mq_msgs
    WHERE id != uuid_nil()
    AND attempt_at <= NOW()
    AND ($1::TEXT[] IS NULL OR channel_name = ANY($1))
    AND NOT mq_uuid_exists(after_message_id)
    GROUP BY channel_name, channel_args
    ORDER BY channel_name, channel_args";
const SQLXMQ_WAIT_TIME: &str = "
    SELECT MIN(mq_msgs.attempt_at) - NOW()
    FROM mq_msgs
    WHERE mq_msgs.id != uuid_nil()
    AND NOT mq_uuid_exists(mq_msgs.after_message_id)
    AND ($1::TEXT[] IS NULL OR mq_msgs.channel_name = ANY($1))";

/// The loose index scan finds the same channels and the same wait time as sqlxmq's
/// queries, over channels that are ready, delayed, waiting for an ordered predecessor
/// or out of attempts, with and without a list of channel names.
#[tokio::test]
async fn rewritten_functions_agree_with_the_sqlxmq_queries() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    const HOUR: Duration = Duration::from_secs(3600);
    let messages = [
        Message::new(1, "a"),
        Message {
            channel_args: "1",
            ..Message::new(2, "a")
        },
        Message {
            channel_args: "2",
            delay: HOUR,
            ..Message::new(3, "a")
        },
        Message {
            delay: 2 * HOUR,
            ..Message::new(4, "b")
        },
        Message::new(5, "b"),
        Message {
            channel_args: "x",
            delay: 3 * HOUR,
            ordered: true,
            ..Message::new(6, "c")
        },
        Message {
            channel_args: "x",
            ordered: true,
            ..Message::new(7, "c")
        },
        Message::new(8, "d"),
        Message {
            delay: 4 * HOUR,
            ..Message::new(9, "e")
        },
        Message {
            channel_args: "later",
            delay: 5 * HOUR,
            ..Message::new(10, "e")
        },
    ];
    for message in &messages {
        spawn(&mut conn, message).await;
    }
    // Out of attempts, as mq_poll leaves a message after its last one.
    sqlx::query("UPDATE mq_msgs SET attempt_at = NULL, attempts = 0 WHERE channel_name = 'd'")
        .execute(&mut *conn)
        .await
        .unwrap();

    let channel_lists: [Option<&[&str]>; 5] = [
        None,
        Some(&["a", "c", "missing"]),
        Some(&["e", "d", "e"]),
        Some(&["d"]),
        Some(&[]),
    ];
    for channels in channel_lists {
        // One transaction, so that NOW() is the same for both sides.
        let mut tx = db.pool.begin().await.unwrap();
        let expected: Vec<(String, String)> = sqlx::query_as(SQLXMQ_ACTIVE_CHANNELS)
            .bind(channels)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        let actual: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, args FROM mq_active_channels($1, 100) ORDER BY name, args",
        )
        .bind(channels)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        assert_eq!(actual, expected, "active channels of {channels:?}");

        let expected: Option<PgInterval> = sqlx::query_scalar(SQLXMQ_WAIT_TIME)
            .bind(channels)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let actual: Option<PgInterval> =
            sqlx::query_scalar("SELECT MIN(attempt_at) - NOW() FROM mq_channel_heads($1)")
                .bind(channels)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(actual, expected, "wait time of {channels:?}");
        tx.rollback().await.unwrap();
    }

    // Channels e and d have nothing ready, so mq_poll itself answers with the wait time.
    let mut tx = db.pool.begin().await.unwrap();
    let expected: Option<PgInterval> = sqlx::query_scalar(SQLXMQ_WAIT_TIME)
        .bind(&["e", "d"][..])
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let polled = poll(&mut tx, Some(&["e", "d"]), 5).await;
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].wait_time, expected);
    tx.rollback().await.unwrap();

    let limited: Vec<(String, String)> =
        sqlx::query_as("SELECT name, args FROM mq_active_channels(NULL, 2)")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(limited.len(), 2, "batch_size limits the channels");
}

/// Rows of mq_msgs and of its indexes read by `sql`, taken from this transaction's
/// statistics counters. They count the scans of nested PL/pgSQL calls (where the walk
/// over channels runs), which EXPLAIN of the outer statement does not show.
async fn rows_read(db: &TestDatabase, sql: &str) -> (i64, Vec<PgRow>) {
    const COUNTER: &str = "
        SELECT (pg_stat_get_xact_tuples_returned('mq_msgs'::regclass)
            + (SELECT COALESCE(SUM(pg_stat_get_xact_tuples_returned(indexrelid)), 0)
               FROM pg_index WHERE indrelid = 'mq_msgs'::regclass))::BIGINT";
    let mut tx = db.pool.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar(COUNTER)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let rows = sqlx::query(sql).fetch_all(&mut *tx).await.unwrap();
    let after: i64 = sqlx::query_scalar(COUNTER)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Rolled back, so that every statement sees the same queue.
    tx.rollback().await.unwrap();
    (after - before, rows)
}

fn as_polled(rows: &[PgRow]) -> Vec<Polled> {
    rows.iter()
        .map(|row| Polled::from_row(row).expect("an mq_poll row"))
        .collect()
}

/// A poll reads a few index entries per channel, not the backlog: sqlxmq 0.6.0 read all
/// 20,000 ready messages to choose a channel, and all 20,000 delayed ones to compute the
/// wait time. Checked with the statistics of a table never analyzed since the insert (as
/// right after a burst) and of an analyzed one.
#[tokio::test]
async fn polling_reads_one_index_entry_per_channel() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "SELECT mq_insert(ARRAY(
            SELECT (gen_random_uuid(), CASE WHEN n % 2 = 0 THEN interval '0' ELSE interval '1 hour' END,
                    4, interval '1 second', CASE WHEN n % 2 = 0 THEN 'bulk' ELSE 'later' END, '',
                    NULL, FALSE, 'job', NULL, NULL)::mq_new_t
            FROM generate_series(1, 40000) AS n))",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // Guards against counters that stay at zero (for instance with track_counts off).
    let (everything, _) = rows_read(&db, "SELECT count(*) FROM mq_msgs").await;
    assert!(everything >= 40_000, "a full scan read {everything} rows");

    for analyzed in [false, true] {
        if analyzed {
            sqlx::query("ANALYZE mq_msgs")
                .execute(&db.pool)
                .await
                .unwrap();
        }
        for sql in [
            "SELECT * FROM mq_active_channels(NULL, 1)",
            "SELECT * FROM mq_active_channels(ARRAY['bulk', 'later'], 1)",
        ] {
            let (read, _) = rows_read(&db, sql).await;
            assert!(read < 100, "{sql} read {read} rows (analyzed: {analyzed})");
        }

        let (read, rows) = rows_read(&db, "SELECT * FROM mq_poll(NULL, 1)").await;
        let polled = as_polled(&rows);
        assert_eq!(polled.len(), 1);
        assert!(polled[0].id.is_some(), "a bulk message is ready");
        assert!(
            read < 100,
            "a ready poll read {read} rows (analyzed: {analyzed})"
        );

        let (read, rows) = rows_read(&db, "SELECT * FROM mq_poll(ARRAY['later'], 1)").await;
        let wait = wait_seconds(&as_polled(&rows)).unwrap();
        assert!(wait > 3000.0, "wait {wait}");
        assert!(
            read < 100,
            "an idle poll read {read} rows (analyzed: {analyzed})"
        );
    }
}
