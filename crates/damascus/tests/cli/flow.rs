//! The happy paths: init, projects, ingest, list, show, status.

use damascus_testdb::TestDatabase;

use crate::{ok, run, with_web_project, write};

#[tokio::test]
async fn init_applies_migrations_once() {
    let db = TestDatabase::empty().await;
    let first = ok(run(&db, &["init"], ""));
    let all = damascus_db::migrate::MIGRATOR.iter().count();
    assert!(
        first.contains(&format!("applied {all} migrations")),
        "{first}"
    );
    let second = ok(run(&db, &["init"], ""));
    assert!(second.contains("nothing to do"), "{second}");
}

#[tokio::test]
async fn status_reports_schema_and_counts() {
    let db = with_web_project().await;
    ok(run(&db, &["ingest", "-p", "web"], "# One\nbody"));
    let out = ok(run(&db, &["status"], ""));
    assert!(out.contains("(DATABASE_URL)"), "{out}");
    assert!(
        out.contains(&format!(
            "version {}",
            damascus_db::migrate::latest_version()
        )),
        "{out}"
    );
    assert!(out.contains("spec 1,"), "{out}");
    assert!(
        out.contains("jobs       1 queued, 0 running (global cap 4)"),
        "{out}"
    );
    assert!(
        out.contains("events     0 deliveries to webhooks retrying, 0 dead\n"),
        "{out}"
    );
    assert!(
        out.contains("none; start one with: damascus worker"),
        "{out}"
    );
    assert!(!out.contains("named locks"), "{out}");
    // Two items with the lock db in review: one holds it, one waits.
    for _ in 0..2 {
        ok(run(
            &db,
            &[
                "ingest", "-p", "web", "--lock", "db", "--title", "Schema", "-",
            ],
            "Change it.",
        ));
    }
    sqlx::query("delete from damascus_jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update work_items set phase = 'review' where id in (2, 3)")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = ok(run(&db, &["status"], ""));
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("db "))
        .unwrap_or_else(|| panic!("no lock line: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[0], "db", "{out}");
    assert!(cells[1] == "2" || cells[1] == "3", "{out}");
    assert_eq!(cells.last(), Some(&"1"), "one waits: {out}");
    // Both are in web's merge queue, in the order they entered review.
    assert!(out.contains("merge queues"), "{out}");
    let queued: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("/srv/git/web.git main"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(queued.len(), 2, "{out}");
    assert_eq!(&queued[0][2..5], ["1/2", "2", "web"], "{out}");
    assert_eq!(&queued[1][2..5], ["2/2", "3", "web"], "{out}");
    assert!(
        !out.contains("merge-queue "),
        "the queue's lock is shown as the queue: {out}"
    );
    let shown = ok(run(&db, &["show", "3"], ""));
    assert!(
        shown.contains("queue      2 of 2 into /srv/git/web.git main: waiting since"),
        "{shown}"
    );
    // A delivery the relay gave up on is shown per webhook, with what to do.
    ok(run(
        &db,
        &["webhook", "add", "chat", "http://127.0.0.1:9/hook"],
        "",
    ));
    sqlx::query(
        "insert into webhook_deliveries (webhook_id, event_id, state, attempts)
         select w.id, 1, 'dead', 10 from webhooks w",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = ok(run(&db, &["status"], ""));
    assert!(
        out.contains("events     0 deliveries to webhooks retrying, 1 dead (see damascus webhook list; send them again with: damascus webhook redrive NAME)"),
        "{out}"
    );
    assert!(
        out.contains("  webhook chat: 0 pending, 0 retrying, 1 dead"),
        "{out}"
    );
}

#[tokio::test]
async fn status_of_an_uninitialized_database_says_to_init() {
    let db = TestDatabase::empty().await;
    let out = ok(run(&db, &["status"], ""));
    assert!(out.contains("not initialized; run: damascus init"), "{out}");
}

#[tokio::test]
async fn ingest_from_file_and_stdin_then_list_and_show() {
    let db = with_web_project().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "login.md",
        b"# Add login\n\nUsers log in with email.\n",
    );
    let out = ok(run(&db, &["ingest", "--project", "web", &file], ""));
    assert!(
        out.contains("ingested item 1 into project web (phase spec): Add login"),
        "{out}"
    );
    let out = ok(run(
        &db,
        &["ingest", "-p", "web", "--title", "Logout", "-"],
        "A button to log out.\n",
    ));
    assert!(out.contains("item 2") && out.contains("Logout"), "{out}");

    let listed = ok(run(&db, &["items"], ""));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("1 ") && l.contains("spec") && l.ends_with("Add login")),
        "{listed}"
    );
    assert!(listed.contains("Logout"));
    let only_merged = ok(run(&db, &["items", "--phase", "merged"], ""));
    assert!(only_merged.contains("no items match"), "{only_merged}");

    let shown = ok(run(&db, &["show", "1"], ""));
    assert!(shown.contains("item 1: Add login"), "{shown}");
    assert!(shown.contains("Users log in with email."), "{shown}");
    assert!(shown.contains("item.ingested"), "{shown}");
    assert!(shown.contains("test       cargo test"), "{shown}");

    // Gates given on the command line: a dependency and two locks (one repeated).
    let out = ok(run(
        &db,
        &[
            "ingest",
            "-p",
            "web",
            "--title",
            "Schema",
            "--depends-on",
            "1",
            "--lock",
            "db",
            "--lock",
            "merge:web",
            "--lock",
            "db",
            "-",
        ],
        "Change the schema.\n",
    ));
    assert!(out.contains("item 3"), "{out}");
    let shown = ok(run(&db, &["show", "3"], ""));
    for gate in [
        "depends on item 1: closed",
        "lock db: not held",
        "lock merge:web: not held",
    ] {
        assert!(shown.contains(gate), "{gate}: {shown}");
    }
    assert_eq!(shown.matches("lock db:").count(), 1, "{shown}");

    let stored: (String, String) =
        sqlx::query_as("select title, body from work_items where id = 2")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, ("Logout".into(), "A button to log out.".into()));
}

#[tokio::test]
async fn project_list_shows_counts() {
    let db = with_web_project().await;
    ok(run(&db, &["ingest", "-p", "web"], "# One\n"));
    let out = ok(run(&db, &["project", "list"], ""));
    assert!(
        out.lines()
            .any(|l| l.starts_with("web") && l.contains("1/1") && l.contains("active")),
        "{out}"
    );
}
