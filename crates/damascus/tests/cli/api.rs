//! The API's commands: tokens, and the refusals of serve and run.

use damascus_testdb::TestDatabase;

use crate::{ok, refused, run};

#[tokio::test]
async fn tokens_are_shown_once_listed_and_revoked() {
    let db = TestDatabase::new().await;
    let token = ok(run(&db, &["token", "create", "ci-bot"], ""));
    let token = token.trim();
    assert!(token.starts_with("dmsc_"), "{token}");
    assert!(damascus_db::tokens::verify(&db.pool, token)
        .await
        .unwrap()
        .is_some());
    let listed = ok(run(&db, &["token", "list"], ""));
    assert!(
        listed.contains("ci-bot") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(token), "the list never shows a secret");
    refused(
        run(&db, &["token", "create", "ci-bot"], ""),
        1,
        &["exists already"],
    );
    refused(
        run(&db, &["token", "create", "no spaces"], ""),
        1,
        &["not allowed", "letters, digits"],
    );
    ok(run(&db, &["token", "revoke", "ci-bot"], ""));
    assert!(damascus_db::tokens::verify(&db.pool, token)
        .await
        .unwrap()
        .is_none());
    refused(
        run(&db, &["token", "revoke", "ci-bot"], ""),
        1,
        &["no active token named \"ci-bot\""],
    );
}

#[tokio::test]
async fn serve_refusals() {
    let db = TestDatabase::new().await;
    refused(
        run(&db, &["serve", "--listen", "localhost"], ""),
        2,
        &["invalid value 'localhost'"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        run(&db, &["serve", "--listen", &addr], ""),
        1,
        &["cannot listen on", "--listen"],
    );
    refused(
        run(&db, &["run", "--listen", &addr], ""),
        1,
        &["cannot listen on"],
    );
}
