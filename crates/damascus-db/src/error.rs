//! The one error type of the storage layer. Each variant says what went wrong and what
//! to do about it; callers at the edge print it with its chain.

use std::path::PathBuf;

use crate::cluster::ClusterError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({reason}); expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")]
    InvalidUrl { reason: String },
    #[error("cannot connect to the database at {target}: {reason}; check that the server is running and the URL is right, or unset DATABASE_URL to use the embedded cluster")]
    Unreachable { target: String, reason: String },
    #[error("the embedded PostgreSQL cluster in {data_dir} is not available")]
    Cluster {
        data_dir: PathBuf,
        #[source]
        source: ClusterError,
    },
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database has no Damascus schema yet; run: damascus init")]
    NotInitialized,
    #[error("the database schema is at version {applied}, but this damascus needs {expected}; run: damascus init")]
    SchemaBehind { applied: i64, expected: i64 },
    #[error("this database was created by a development build of Damascus (it records migration {version}), whose migrations were replaced by one baseline schema ({baseline}) before release; it cannot be upgraded: dump what you need from it (pg_dump), then start from an empty database (point DATABASE_URL at a new one, or, with the embedded cluster, move its data directory aside) and run: damascus init")]
    DevelopmentSchema { version: i64, baseline: i64 },
    #[error("project {0:?} not found; list projects with: damascus project list")]
    ProjectNotFound(String),
    #[error(
        "project {0:?} already exists; pick another name or see it with: damascus project list"
    )]
    ProjectExists(String),
    #[error("work item {0} not found; list items with: damascus items")]
    ItemNotFound(i64),
    #[error("human issue {0} not found; list open questions with: damascus items --phase blocked, then damascus show ID")]
    HumanIssueNotFound(i64),
    #[error("human issue {id} is already {status}; only open questions take an answer")]
    HumanIssueClosed { id: i64, status: String },
    #[error("a token named {0:?} exists already; pick another name or revoke it with: damascus token revoke NAME")]
    TokenExists(String),
    #[error("no active token named {0:?}; list them with: damascus token list")]
    TokenNotFound(String),
    #[error("a webhook named {0:?} exists already; pick another name or remove it with: damascus webhook remove NAME")]
    WebhookExists(String),
    #[error("no webhook named {0:?}; list them with: damascus webhook list")]
    WebhookNotFound(String),
    #[error("event {0} not found (pruned, or never written); list recent events with: damascus show ITEM")]
    EventNotFound(i64),
    #[error("{0}")]
    Conflict(String),
    #[error("the database refused the change: {0}")]
    Constraint(String),
    #[error("database error")]
    Sqlx(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> DbError {
        match err.as_database_error() {
            Some(db) if db.constraint().is_some() || db.code().as_deref() == Some("23514") => {
                DbError::Constraint(db.message().to_owned())
            }
            // Data exceptions (a NUL byte in text, a value out of range) are the
            // client's input, not a server failure.
            Some(db) if db.code().is_some_and(|c| c.starts_with("22")) => DbError::Constraint(
                format!("{}; correct the value and send it again", db.message()),
            ),
            _ => DbError::Sqlx(err),
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;
