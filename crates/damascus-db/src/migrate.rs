//! The schema: the migrations in `migrations/` (embedded at build time), applying them,
//! and reading which version a database is at.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::error::{DbError, DbResult};

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The oldest migration this build knows: the baseline, which creates the whole schema.
pub fn baseline_version() -> i64 {
    MIGRATOR
        .iter()
        .map(|m| m.version)
        .min()
        .expect("migrations/ is not empty")
}

/// The newest migration this build knows.
pub fn latest_version() -> i64 {
    MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .expect("migrations/ is not empty")
}

/// How a database's schema compares with this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    Empty,
    Current {
        version: i64,
    },
    Behind {
        applied: i64,
        pending: usize,
    },
    /// The database was migrated by a newer damascus.
    Ahead {
        applied: i64,
    },
}

/// Reads how the database's schema compares with this build. A database that records a
/// migration older than the baseline was made by a development build whose migrations
/// the baseline replaced: it is refused with [`DbError::DevelopmentSchema`], since no
/// migration leads from it to this schema.
pub async fn schema_state(pool: &PgPool) -> DbResult<SchemaState> {
    let has_table: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(pool)
        .await?;
    if !has_table {
        return Ok(SchemaState::Empty);
    }
    let baseline = baseline_version();
    let retired: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where version < $1")
            .bind(baseline)
            .fetch_one(pool)
            .await?;
    if let Some(version) = retired {
        return Err(DbError::DevelopmentSchema { version, baseline });
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
            .fetch_all(pool)
            .await?;
    let Some(&newest) = applied.last() else {
        return Ok(SchemaState::Empty);
    };
    let latest = latest_version();
    let pending = MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count();
    Ok(if newest > latest {
        SchemaState::Ahead { applied: newest }
    } else if pending > 0 {
        SchemaState::Behind {
            applied: newest,
            pending,
        }
    } else {
        SchemaState::Current { version: newest }
    })
}

/// Fails unless the schema is exactly what this build expects.
pub async fn require_current(pool: &PgPool) -> DbResult<()> {
    match schema_state(pool).await? {
        SchemaState::Current { .. } | SchemaState::Ahead { .. } => Ok(()),
        SchemaState::Empty => Err(DbError::NotInitialized),
        SchemaState::Behind { applied, .. } => Err(DbError::SchemaBehind {
            applied,
            expected: latest_version(),
        }),
    }
}

/// Applies every pending migration; returns how many ran. Running it twice is a no-op:
/// sqlx records each applied version and takes an advisory lock while migrating. A
/// database of a development build from before the baseline is refused, untouched
/// (see [`schema_state`]).
pub async fn apply(pool: &PgPool) -> DbResult<usize> {
    let before: usize = match schema_state(pool).await? {
        SchemaState::Empty => MIGRATOR.iter().count(),
        SchemaState::Behind { pending, .. } => pending,
        SchemaState::Current { .. } | SchemaState::Ahead { .. } => 0,
    };
    // A migration may rewrite a large table: no statement timeout while it runs.
    let mut conn = pool.acquire().await?;
    let timeout: String = sqlx::query_scalar("show statement_timeout")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("set statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let migrated = MIGRATOR.run(&mut *conn).await;
    sqlx::query("select set_config('statement_timeout', $1, false)")
        .bind(&timeout)
        .execute(&mut *conn)
        .await?;
    migrated?;
    Ok(before)
}
