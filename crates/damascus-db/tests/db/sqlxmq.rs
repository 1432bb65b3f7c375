//! The queue tables and functions copied from sqlxmq, as
//! `migrations/20261201000000_baseline.sql` defines them: ANALYZE and writes work
//! without `public` on the search_path, and only the functions Damascus calls are there.

use damascus_testdb::TestDatabase;

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

/// sqlxmq's runner functions are not part of the schema: Damascus claims with
/// `damascus_claim` and calls only `mq_insert`, `mq_delete`, `mq_latest_message` (from
/// `mq_insert`) and `mq_uuid_exists` (the ready index).
#[tokio::test]
async fn only_the_copied_functions_damascus_calls_exist() {
    let db = TestDatabase::new().await;
    let names: Vec<String> = sqlx::query_scalar(
        "select proname::text from pg_proc
         where pronamespace = 'public'::regnamespace and proname like 'mq\\_%'
         order by proname",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        names,
        [
            "mq_delete",
            "mq_insert",
            "mq_latest_message",
            "mq_uuid_exists"
        ]
    );
}
