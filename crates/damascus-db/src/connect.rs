//! Choosing and opening the database: a `DATABASE_URL` when one is given, otherwise the
//! embedded cluster in the data directory. Either way the caller gets a pool and an
//! [`Origin`] that says, without secrets, where the data lives.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::cluster::{ClusterLayout, Durability, EmbeddedCluster, StartOutcome};
use crate::error::{DbError, DbResult};

/// The database the embedded cluster keeps Damascus's tables in.
pub const EMBEDDED_DATABASE: &str = "damascus";

/// Where to find the database, as the user asked for it.
#[derive(Debug, Clone)]
pub enum Target {
    Url(String),
    Embedded { data_dir: PathBuf },
}

/// Where the data lives, fit for printing (passwords are masked).
#[derive(Debug, Clone)]
pub enum Origin {
    Url {
        redacted: String,
    },
    Embedded {
        layout: ClusterLayout,
        started: StartOutcome,
        url: String,
    },
}

impl Origin {
    /// The connection URL with any password masked.
    pub fn display_url(&self) -> &str {
        match self {
            Origin::Url { redacted } => redacted,
            Origin::Embedded { url, .. } => url,
        }
    }
}

/// An open pool and where it points.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: PgPool,
    pub origin: Origin,
}

/// Settings for the pool that are not about where the database is.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// The server cancels a statement that runs (or waits for a lock) longer.
    pub statement_timeout: Duration,
    /// The server ends a session that sits idle inside a transaction longer, releasing
    /// its locks (a worker that hung or vanished mid-transaction).
    pub idle_in_transaction_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(60),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// Masks the password of a URL; a URL that does not parse is replaced entirely, since
/// it may hold a password in a place we cannot find.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            // libpq also takes the password as a query parameter.
            if url.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "(unparseable URL)".to_owned(),
    }
}

pub async fn open(target: &Target, settings: PoolSettings) -> DbResult<Database> {
    match target {
        Target::Url(raw) => {
            if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
                return Err(DbError::InvalidUrl {
                    reason: "it must start with postgresql:// or postgres://".into(),
                });
            }
            let options = PgConnectOptions::from_str(raw).map_err(|e| DbError::InvalidUrl {
                reason: e.to_string(),
            })?;
            let redacted = redact_url(raw);
            let pool = connect_pool(options, settings, &redacted).await?;
            Ok(Database {
                pool,
                origin: Origin::Url { redacted },
            })
        }
        Target::Embedded { data_dir } => {
            let cluster_error = |source| DbError::Cluster {
                data_dir: data_dir.clone(),
                source,
            };
            let cluster =
                EmbeddedCluster::new(data_dir, Durability::Durable).map_err(cluster_error)?;
            let (cluster, started) = tokio::task::spawn_blocking(move || {
                let started = cluster.ensure_running();
                (cluster, started)
            })
            .await
            .expect("the cluster start task does not panic");
            let started = started.map_err(cluster_error)?;
            let url = cluster.layout.url(EMBEDDED_DATABASE);
            create_database_if_missing(&cluster.layout.url("postgres"), EMBEDDED_DATABASE).await?;
            let options = PgConnectOptions::from_str(&url).map_err(|e| DbError::InvalidUrl {
                reason: e.to_string(),
            })?;
            let pool = connect_pool(options, settings, &url).await?;
            Ok(Database {
                pool,
                origin: Origin::Embedded {
                    layout: cluster.layout,
                    started,
                    url,
                },
            })
        }
    }
}

/// Connects once, directly, so that a wrong or unreachable server is reported at once
/// (a pool would retry until its acquire timeout), then opens the pool.
async fn connect_pool(
    options: PgConnectOptions,
    settings: PoolSettings,
    shown_as: &str,
) -> DbResult<PgPool> {
    let options = options
        .application_name("damascus")
        .log_statements(tracing::log::LevelFilter::Trace);
    let unreachable = |reason: String| DbError::Unreachable {
        target: shown_as.to_owned(),
        reason,
    };
    let probe = tokio::time::timeout(
        settings.connect_timeout,
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {:?}", settings.connect_timeout)))?
    .map_err(|e| unreachable(e.to_string()))?;
    probe.close().await?;
    Ok(pool_options(settings).connect_lazy_with(options))
}

/// A connection handed back to the pool less than this long ago is handed out again
/// without a ping: sqlx pinged it when it came back, and no server restarts in less.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(100);

/// Per-session settings every pooled connection gets: the statement and
/// idle-in-transaction timeouts, and TCP keepalives the server sends so that a client
/// that vanished (its machine gone, the network cut) is noticed within about a minute
/// and its session ended, releasing what it held (Unix-socket sessions ignore them).
const SESSION_SETTINGS: &str = "select set_config('statement_timeout', $1, false),
        set_config('idle_in_transaction_session_timeout', $2, false),
        set_config('tcp_keepalives_idle', '30', false),
        set_config('tcp_keepalives_interval', '10', false),
        set_config('tcp_keepalives_count', '3', false)";

/// The pool's options. Every connection gets the settings' statement and
/// idle-in-transaction timeouts and the server's TCP keepalives. sqlx pings a
/// connection when it is released and, by default, again before handing it out: a
/// round trip before every statement, on the critical path of every claim and verdict.
/// Here the second ping happens only for a connection that sat idle for
/// `PING_IF_IDLE_FOR` (one that may have outlived a server restart).
pub fn pool_options(settings: PoolSettings) -> PgPoolOptions {
    let statement_timeout = settings.statement_timeout.as_millis().to_string();
    let idle_timeout = settings.idle_in_transaction_timeout.as_millis().to_string();
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .after_connect(move |conn, _meta| {
            let query = sqlx::query(SESSION_SETTINGS)
                .bind(statement_timeout.clone())
                .bind(idle_timeout.clone());
            Box::pin(async move {
                query.execute(&mut *conn).await?;
                Ok(())
            })
        })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IF_IDLE_FOR {
                    return Ok(true);
                }
                match conn.ping().await {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        tracing::info!(error = %e, "dropping a pooled connection that no longer answers");
                        Ok(false)
                    }
                }
            })
        })
}

/// Creates `name` through the maintenance database at `admin_url`. Two processes may
/// race here; the loser's `duplicate_database` error means the work is done.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> DbResult<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(|e| DbError::Unreachable {
            target: redact_url(admin_url),
            reason: e.to_string(),
        })?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let create = format!("create database {}", quote_ident(name));
        match sqlx::query(&create).execute(&mut conn).await {
            Ok(_) => {}
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// The same server and credentials as `url`, another database.
pub fn url_for_database(url: &str, database: &str) -> DbResult<String> {
    let mut parsed = url::Url::parse(url).map_err(|e| DbError::InvalidUrl {
        reason: e.to_string(),
    })?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// Drops `name` through the maintenance database at `admin_url`, ending its sessions.
pub async fn drop_database(admin_url: &str, name: &str) -> DbResult<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(|e| DbError::Unreachable {
            target: redact_url(admin_url),
            reason: e.to_string(),
        })?;
    sqlx::query(&format!(
        "drop database if exists {} with (force)",
        quote_ident(name)
    ))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// Quotes an SQL identifier; used only for database names, which cannot be bound.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("postgresql://app:s3cret@db:5432/damascus"),
            "postgresql://app:***@db:5432/damascus"
        );
        assert_eq!(
            redact_url("postgresql://app@db/damascus"),
            "postgresql://app@db/damascus"
        );
        assert_eq!(redact_url("not a url s3cret"), "(unparseable URL)");
        assert!(!redact_url("postgresql://db/x?user=a&password=s3cret").contains("s3cret"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
