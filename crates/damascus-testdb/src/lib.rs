//! The test harness for a real PostgreSQL: one server per test run, a template database
//! migrated once, and a fresh database per test copied from it.
//!
//! With `DATABASE_URL` set, that server is used (its user must be allowed to create
//! databases). Without it, the harness starts a private cluster from the machine's
//! server binaries in `$TMPDIR/damascus-test-<uid>-<hash>`, shared by every test binary
//! and every test process of the run (a file lock serialises the start) and left
//! running for the next run; `damascus db stop --data-dir <that dir>` stops it.
//!
//! The template is named after a hash of the migrations, so editing a migration makes
//! a new one. Databases of test processes that died are dropped at the next start.
//!
//! `http` holds HTTP fixtures that tests of several crates share.
//!
//! Architecture invariant: only tests depend on this crate.

pub mod http;
pub mod promtool;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use damascus_db::cluster::{Durability, EmbeddedCluster};
use damascus_db::connect::quote_ident;
use damascus_db::migrate::MIGRATOR;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

const TEST_DB_PREFIX: &str = "damascus_test_";

/// The server every test of this process talks to.
#[derive(Debug)]
struct Server {
    /// A URL for creating and dropping databases (never one of the test databases).
    admin_url: String,
    template: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub pool: PgPool,
    /// A connection URL for subprocesses (e.g. the `damascus` binary as `DATABASE_URL`).
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// A fresh database with every migration applied.
    pub async fn new() -> TestDatabase {
        let server = server();
        TestDatabase::create(Some(&server.template)).await
    }

    /// A fresh database with no schema at all, for testing `damascus init`.
    pub async fn empty() -> TestDatabase {
        TestDatabase::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDatabase {
        let server = server();
        let name = format!(
            "{TEST_DB_PREFIX}{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .expect("connect to the test server");
        let create = match template {
            Some(t) => format!(
                "create database {} template {}",
                quote_ident(&name),
                quote_ident(t)
            ),
            None => format!("create database {}", quote_ident(&name)),
        };
        sqlx::query(&create)
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let url = database_url(&server.admin_url, &name);
        let pool = damascus_db::connect::pool_options(damascus_db::connect::PoolSettings {
            max_connections: 8,
            ..Default::default()
        })
        .connect(&url)
        .await
        .expect("connect to the test database");
        TestDatabase { pool, url, name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = server().admin_url.clone();
        let name = self.name.clone();
        // Drop cannot await, and may run inside or outside a runtime: use a thread with
        // a runtime of its own. FORCE ends the pool's connections that are still open.
        let dropped = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!(
                    "drop database if exists {} with (force)",
                    quote_ident(&name)
                ))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime for the test harness")
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        std::thread::spawn(|| runtime().block_on(start_server()))
            .join()
            .expect("the test server starts")
    })
}

/// The data directory of the shared test cluster: one per user and checkout.
pub fn test_cluster_dir() -> std::path::PathBuf {
    let checkout = hash_hex(env!("CARGO_MANIFEST_DIR").as_bytes());
    std::env::temp_dir().join(format!(
        "damascus-test-{}-{}",
        nix::unistd::Uid::effective(),
        &checkout[..8]
    ))
}

async fn start_server() -> Server {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let cluster = EmbeddedCluster::new(&test_cluster_dir(), Durability::Ephemeral)
                .unwrap_or_else(|e| panic!("cannot set up the test cluster: {e}"));
            cluster.ensure_running().unwrap_or_else(|e| {
                panic!(
                    "cannot start the test cluster in {}: {e}",
                    cluster.layout.root.display()
                )
            });
            cluster.layout.url("postgres")
        }
    };
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    drop_orphaned_databases(&mut admin).await;
    let template = ensure_template(&mut admin, &admin_url).await;
    admin.close().await.ok();
    Server {
        admin_url,
        template,
    }
}

/// Drops test databases whose process is gone (a crashed or killed test run).
async fn drop_orphaned_databases(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("select datname from pg_database where datname like $1")
            .bind(format!("{TEST_DB_PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
            .expect("list test databases");
    for name in names {
        let pid = name
            .strip_prefix(TEST_DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = sqlx::query(&format!(
                "drop database if exists {} with (force)",
                quote_ident(&name)
            ))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// Builds the migrated template once per migration set. An advisory lock makes
/// concurrent test processes wait for the one that builds it.
async fn ensure_template(admin: &mut PgConnection, admin_url: &str) -> String {
    let mut hasher = Sha256::new();
    for migration in MIGRATOR.iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let template = format!("damascus_template_{digest}");
    let lock_key = i64::from_le_bytes(
        Sha256::digest(template.as_bytes())[..8]
            .try_into()
            .expect("8 bytes"),
    );
    sqlx::query("select pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *admin)
        .await
        .expect("take the template lock");
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&template)
            .fetch_one(&mut *admin)
            .await
            .expect("look for the template");
    if !exists {
        let building = format!("{template}_building");
        for sql in [
            format!(
                "drop database if exists {} with (force)",
                quote_ident(&building)
            ),
            format!("create database {}", quote_ident(&building)),
        ] {
            sqlx::query(&sql)
                .execute(&mut *admin)
                .await
                .expect("prepare the template");
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url(admin_url, &building))
            .await
            .expect("connect to the template");
        MIGRATOR.run(&pool).await.expect("migrate the template");
        pool.close().await;
        for sql in [
            format!(
                "alter database {} rename to {}",
                quote_ident(&building),
                quote_ident(&template)
            ),
            // Nobody may connect to a template: CREATE DATABASE ... TEMPLATE fails while
            // anyone is connected to it.
            format!(
                "alter database {} with is_template true allow_connections false",
                quote_ident(&template)
            ),
        ] {
            sqlx::query(&sql)
                .execute(&mut *admin)
                .await
                .expect("finish the template");
        }
    }
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *admin)
        .await
        .expect("release the template lock");
    template
}

fn database_url(url: &str, database: &str) -> String {
    damascus_db::connect::url_for_database(url, database).expect("the server URL parses")
}

fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
