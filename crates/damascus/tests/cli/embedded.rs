//! The embedded default, end to end through the binary: no DATABASE_URL, a data
//! directory of the test's own, init, status, a real connection on the printed socket,
//! stop.

use std::os::unix::fs::PermissionsExt;

use sqlx::{Connection, PgConnection};

use crate::{damascus, ok, refused};

#[tokio::test]
async fn init_status_psql_and_stop_on_the_embedded_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // As root the server runs as another user, who must be able to enter this directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();

    let init = ok(damascus()
        .args(["--data-dir", data, "init"])
        .output()
        .unwrap());
    let all = damascus_db::migrate::MIGRATOR.iter().count();
    assert!(
        init.contains(&format!("applied {all} migrations")),
        "{init}"
    );
    let status = ok(damascus()
        .env("DAMASCUS_DATA_DIR", data)
        .arg("status")
        .output()
        .unwrap());
    assert!(
        status.contains("embedded PostgreSQL cluster (running)"),
        "{status}"
    );
    assert!(status.contains("up to date"), "{status}");
    let socket_line = status
        .lines()
        .find(|l| l.trim_start().starts_with("socket"))
        .unwrap();
    let socket_dir = socket_line.split_whitespace().nth(1).unwrap();
    assert!(socket_dir.starts_with(data), "{status}");

    // A person (or psql) connects with the socket directory the status printed.
    let url = format!(
        "postgresql://damascus@{}:5432/damascus",
        socket_dir.replace('/', "%2F")
    );
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_schema = 'public'
         and table_name in ('projects','work_items','coordination_gates','human_issues','cost_ledger','events_outbox')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 6);
    conn.close().await.unwrap();

    let stopped = ok(damascus()
        .args(["--data-dir", data, "db", "stop"])
        .output()
        .unwrap());
    assert!(stopped.contains("stopped"), "{stopped}");
    let again = ok(damascus()
        .args(["--data-dir", data, "db", "stop"])
        .output()
        .unwrap());
    assert!(again.contains("was not running"), "{again}");
}

#[test]
fn missing_server_binaries_name_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let out = damascus()
        .env("DAMASCUS_PG_BIN_DIR", empty.path())
        .args([
            "--data-dir",
            empty.path().join("d").to_str().unwrap(),
            "status",
        ])
        .output()
        .unwrap();
    refused(out, 1, &["lacks initdb", "DAMASCUS_PG_BIN_DIR"]);
}
