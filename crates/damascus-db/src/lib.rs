//! damascus-db owns Damascus's storage: opening the database (a `DATABASE_URL`, or the
//! embedded PostgreSQL cluster it starts from the machine's server binaries), the
//! migrations, and every SQL statement the product runs.
//!
//! Architecture invariants: this is the only crate that holds SQL. It knows nothing of
//! HTTP, JSON request shapes, the CLI or forges. Every state change is one function
//! that runs one transaction, and writes its `events_outbox` row in that transaction.

pub mod agent_sessions;
pub mod budget;
pub mod build_steps;
pub mod cluster;
pub mod connect;
pub mod error;
pub mod events;
pub mod forge_waits;
pub mod history;
pub mod human;
pub mod items;
pub mod jobs;
pub mod merge_queue;
pub mod migrate;
pub mod operator;
pub mod outbox;
pub mod pg_bin;
pub mod processes;
pub mod projects;
pub mod schema_dump;
pub mod status;
pub mod tokens;
mod transitions;
pub mod webhooks;

pub use connect::{open, Database, Origin, PoolSettings, Target};
pub use error::{DbError, DbResult};

use std::str::FromStr;

use sqlx::postgres::PgRow;
use sqlx::Row;

/// Reads a column selected as `enum::text` into its damascus-core type.
fn parse_enum<T>(row: &PgRow, column: &str) -> DbResult<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.try_get(column)?;
    text.parse().map_err(|e: T::Err| {
        DbError::Sqlx(sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    })
}

fn parse_opt_enum<T>(row: &PgRow, column: &str) -> DbResult<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| {
        t.parse().map_err(|e: T::Err| {
            DbError::Sqlx(sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(e),
            })
        })
    })
    .transpose()
}
