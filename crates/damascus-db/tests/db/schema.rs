//! `schema.sql` must be exactly what the migrations produce.

use damascus_db::migrate::{self, SchemaState};
use damascus_db::schema_dump::dump_schema;
use damascus_db::DbError;
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

/// A database migrated by a development build from before the baseline records
/// migrations the baseline replaced. It is refused with what is wrong and what to do,
/// not with sqlx's "previously applied but is missing", and left untouched.
#[tokio::test]
async fn a_development_database_from_before_the_baseline_is_refused() {
    let db = TestDatabase::empty().await;
    // sqlx's own bookkeeping table, as such a build left it: its last migration only
    // (20261125000021_claim_says_when_ready.sql), none of the baseline.
    sqlx::raw_sql(
        "create table _sqlx_migrations (
             version bigint primary key,
             description text not null,
             installed_on timestamptz not null default now(),
             success boolean not null,
             checksum bytea not null,
             execution_time bigint not null
         );
         insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (20261125000021, 'claim says when ready', true, '\\x00', 1);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let refusals = [
        migrate::schema_state(&db.pool)
            .await
            .map(|_| ())
            .unwrap_err(),
        migrate::require_current(&db.pool).await.unwrap_err(),
        migrate::apply(&db.pool).await.map(|_| ()).unwrap_err(),
    ];
    for err in refusals {
        assert!(
            matches!(
                err,
                DbError::DevelopmentSchema {
                    version: 20261125000021,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        for needed in [
            "development build",
            "migration 20261125000021",
            "cannot be upgraded",
            "dump what you need",
            "empty database",
            "damascus init",
        ] {
            assert!(
                message.contains(needed),
                "{needed:?} missing from: {message}"
            );
        }
    }
    // Nothing was migrated.
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from pg_tables where schemaname = 'public' and tablename <> '_sqlx_migrations'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
}

/// The same when the old migrations sit beside the baseline (a development database that
/// someone tried to migrate with a baseline build by hand).
#[tokio::test]
async fn an_old_migration_beside_the_baseline_is_refused() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (20261125000002, 'sqlxmq fixes', true, '\\x00', 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = migrate::require_current(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("development build"), "{err}");
    let err = migrate::apply(&db.pool).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::DevelopmentSchema {
                version: 20261125000002,
                ..
            }
        ),
        "{err:?}"
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
        "damascus_jobs",
        "damascus_slots",
    ] {
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "table {table} is missing");
    }
}

/// The database, not only the code, refuses values outside the vocabularies: each
/// statement is refused by the one rule it breaks (SQLSTATE and constraint), not by
/// whatever else happens to be wrong with it.
#[tokio::test]
async fn database_constraints_hold_for_psql_users() {
    let db = TestDatabase::new().await;
    sqlx::query("insert into projects (name, repository) values ('web', '/srv/web.git')")
        .execute(&db.pool)
        .await
        .unwrap();
    // (statement, SQLSTATE, constraint; None where PostgreSQL names none)
    let refused: [(&str, &str, Option<&str>); 7] = [
        (
            "insert into projects (name, repository) values ('Bad Name', '/x')",
            CHECK_VIOLATION,
            Some("projects_name_format"),
        ),
        (
            "insert into projects (name, repository) values ('web', '/srv/other.git')",
            UNIQUE_VIOLATION,
            Some("projects_name_key"),
        ),
        (
            "insert into projects (name, repository, forge_kind) values ('gh', '/x', 'github')",
            CHECK_VIOLATION,
            Some("projects_forge_repo_required"),
        ),
        (
            "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total) select id, '  ', 3, 10 from projects",
            CHECK_VIOLATION,
            Some("work_items_title_present"),
        ),
        // An enum, not a CHECK: the value cannot even be read as a phase.
        (
            "insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total) select id, 't', 'done', 3, 10 from projects",
            INVALID_TEXT_REPRESENTATION,
            None,
        ),
        (
            "insert into work_items (project_id, title, phase, max_attempts_per_phase, max_attempts_total) select id, 't', 'blocked', 3, 10 from projects",
            CHECK_VIOLATION,
            Some("work_items_blocked_resumes"),
        ),
        (
            "insert into work_items (project_id, title, max_attempts_per_phase, max_attempts_total) values (999, 't', 3, 10)",
            FOREIGN_KEY_VIOLATION,
            Some("work_items_project_id_fkey"),
        ),
    ];
    for (sql, code, constraint) in refused {
        let err = match sqlx::query(sql).execute(&db.pool).await {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => e,
        };
        let db_err = err
            .as_database_error()
            .unwrap_or_else(|| panic!("refused by the client, not the database ({err}): {sql}"));
        assert_eq!(
            (db_err.code().as_deref(), db_err.constraint()),
            (Some(code), constraint),
            "refused for another reason ({db_err}): {sql}"
        );
        if constraint.is_none() {
            assert!(
                db_err.message().contains("enum work_phase"),
                "refused for another reason ({db_err}): {sql}"
            );
        }
    }
    // Nothing of it was written.
    let projects: i64 = sqlx::query_scalar("select count(*) from projects")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let items: i64 = sqlx::query_scalar("select count(*) from work_items")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((projects, items), (1, 0));
}

/// SQLSTATEs of the refusals above (PostgreSQL, Appendix A).
const CHECK_VIOLATION: &str = "23514";
const UNIQUE_VIOLATION: &str = "23505";
const FOREIGN_KEY_VIOLATION: &str = "23503";
const INVALID_TEXT_REPRESENTATION: &str = "22P02";
