//! `schema.sql` must be exactly what the migrations produce.

use damascus_db::migrate::{self, SchemaState};
use damascus_db::schema_dump::dump_schema;
use damascus_testdb::TestDatabase;

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schema.sql");

#[tokio::test]
async fn schema_sql_matches_the_migrations() {
    let db = TestDatabase::new().await;
    let dumped = dump_schema(&db.url).expect("pg_dump the migrated database");
    if std::env::var_os("DAMASCUS_UPDATE_SCHEMA").is_some() {
        std::fs::write(SCHEMA_FILE, &dumped).expect("write schema.sql");
        return;
    }
    let on_disk = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    if on_disk != dumped {
        let first_difference = on_disk
            .lines()
            .zip(dumped.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(n, (a, b))| {
                format!(
                    "line {}: schema.sql has {a:?}, the migrations give {b:?}",
                    n + 1
                )
            })
            .unwrap_or_else(|| "one file is a prefix of the other".into());
        panic!(
            "schema.sql differs from what migrations/ produce ({first_difference}); \
             regenerate it with: scripts/update-schema.sh"
        );
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let db = TestDatabase::empty().await;
    assert_eq!(
        migrate::schema_state(&db.pool).await.unwrap(),
        SchemaState::Empty
    );
    let first = migrate::apply(&db.pool).await.unwrap();
    assert_eq!(first, migrate::MIGRATOR.iter().count());
    assert_eq!(migrate::apply(&db.pool).await.unwrap(), 0);
    assert_eq!(
        migrate::schema_state(&db.pool).await.unwrap(),
        SchemaState::Current {
            version: migrate::latest_version()
        }
    );
}

#[tokio::test]
async fn every_product_table_exists() {
    let db = TestDatabase::new().await;
    for table in [
        "projects",
        "work_items",
        "coordination_gates",
        "human_issues",
        "cost_ledger",
        "events_outbox",
        "mq_msgs",
        "mq_payloads",
    ] {
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "table {table} is missing");
    }
}

/// The database, not only the code, refuses values outside the vocabularies.
#[tokio::test]
async fn database_constraints_hold_for_psql_users() {
    let db = TestDatabase::new().await;
    sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git')")
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = [
        "insert into projects (name, repository) values ('Bad Name', '/x')",
        "insert into projects (name, repository, forge_kind) values ('gh', '/x', 'github')",
        "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total) select id, '  ', 3, 10 from projects",
        "insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total) select id, 't', 'done', 3, 10 from projects",
        "insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total) select id, 't', 'blocked', 3, 10 from projects",
        "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total) values (999, 't', 3, 10)",
    ];
    for sql in refused {
        assert!(
            sqlx::query(sql).execute(&db.pool).await.is_err(),
            "accepted: {sql}"
        );
    }
}
