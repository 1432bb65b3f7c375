//! The embedded cluster: first start, reuse, a crash with a stale pid file, stop.

use std::os::unix::fs::PermissionsExt;

use damascus_db::cluster::{Durability, EmbeddedCluster, StartOutcome, StopOutcome};
use sqlx::{Connection, PgConnection};

async fn answers(cluster: &EmbeddedCluster) -> bool {
    match PgConnection::connect(&cluster.layout.url("postgres")).await {
        Ok(mut conn) => sqlx::query_scalar::<_, i32>("select 1")
            .fetch_one(&mut conn)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn start_reuse_crash_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    // When the tests run as root, the server user must be able to enter the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cluster = EmbeddedCluster::new(&dir.path().join("data"), Durability::Ephemeral).unwrap();
    assert_eq!(cluster.layout.placement_note, None);

    let c = cluster.clone();
    let first = tokio::task::spawn_blocking(move || c.ensure_running())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, StartOutcome::Started { initialized: true });
    assert!(answers(&cluster).await);
    let mode = std::fs::metadata(&cluster.layout.socket_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the socket directory is private");
    assert_eq!(
        cluster.ensure_running().unwrap(),
        StartOutcome::AlreadyRunning
    );

    // A crash: the postmaster dies without cleaning up its pid file.
    let pid = cluster.server_pid().expect("a running server has a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(cluster.layout.pgdata.join("postmaster.pid").exists());
    let c = cluster.clone();
    let again = tokio::task::spawn_blocking(move || c.ensure_running())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, StartOutcome::Started { initialized: false });
    assert!(answers(&cluster).await);

    // A running server whose socket file was deleted is restarted, not reported as fine.
    std::fs::remove_file(cluster.layout.socket_dir.join(".s.PGSQL.5432")).unwrap();
    assert!(!answers(&cluster).await);
    let c = cluster.clone();
    let revived = tokio::task::spawn_blocking(move || c.ensure_running())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revived, StartOutcome::Started { initialized: false });
    assert!(answers(&cluster).await);

    assert_eq!(cluster.stop().unwrap(), StopOutcome::Stopped);
    assert!(!answers(&cluster).await);
    assert_eq!(cluster.stop().unwrap(), StopOutcome::NotRunning);

    // A pid file naming a process that is not postgres (a reused pid) is stale too.
    let pid_file = cluster.layout.pgdata.join("postmaster.pid");
    std::fs::write(
        &pid_file,
        format!(
            "{}\n{}\n",
            std::process::id(),
            cluster.layout.pgdata.display()
        ),
    )
    .unwrap();
    assert_eq!(
        cluster.ensure_running().unwrap(),
        StartOutcome::Started { initialized: false }
    );
    assert!(answers(&cluster).await);
    assert_eq!(cluster.stop().unwrap(), StopOutcome::Stopped);
}
