//! The deployment's secrets never reach the database: an agent that prints them leaves
//! `***` in the stored verdict, the question and every event.

use std::sync::{Arc, Mutex};

use damascus_core::{ForgeKind, SpecMode};

use crate::support::{Setup, GREETING};

#[tokio::test]
async fn secrets_an_agent_prints_are_masked_before_they_are_stored() {
    let setup = Setup::new().await;
    // `gitea-secret` is the forge token of `Setup::loops_config`.
    let agent = setup.agent(
        "agent.sh",
        "cat > /dev/null\necho \"forge gitea-secret key $ANTHROPIC_API_KEY\"\necho \"again: gitea-secret\" >&2\nexit 1",
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 1
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let mut config = setup.loops_config(None);
    config.agent_env = vec![("ANTHROPIC_API_KEY".into(), "sk-ant-test-0123".into())];
    setup.cycle_with(config).await;
    assert_eq!(setup.phase(item).await, "blocked");

    let (reason, log_tail) = damascus_db::items::last_failure(&setup.db.pool, item)
        .await
        .unwrap()
        .unwrap();
    assert!(reason.contains("exited with 1"), "{reason}");
    assert!(log_tail.contains("forge *** key ***"), "{log_tail}");
    assert!(log_tail.contains("again: ***"), "{log_tail}");
    let (question, context): (String, String) =
        sqlx::query_as("select question, context from human_issues where item_id = $1")
            .bind(item)
            .fetch_one(&setup.db.pool)
            .await
            .unwrap();
    let payloads: Vec<String> =
        sqlx::query_scalar("select payload::text from events_outbox where item_id = $1")
            .bind(item)
            .fetch_all(&setup.db.pool)
            .await
            .unwrap();
    assert!(payloads.iter().any(|p| p.contains("forge *** key ***")));
    for text in payloads
        .iter()
        .chain([&reason, &log_tail, &question, &context])
    {
        assert!(
            !text.contains("gitea-secret") && !text.contains("sk-ant-test-0123"),
            "{text}"
        );
    }
}

/// An http(s) remote that demands Basic authentication of every request (401 with a
/// challenge, whatever was sent), recording the `Authorization` headers it got.
fn guarded_remote() -> (String, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(value) = line.strip_prefix("Authorization: ") {
                    record.lock().unwrap().push(value.trim().to_owned());
                }
                line.clear();
            }
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"gitea\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("http://127.0.0.1:{port}/acme/web.git"), seen)
}

/// A Gitea project's http remote gets the worker's Gitea token from git's askpass, and
/// the failure that follows is stored without it.
#[tokio::test]
async fn git_gets_the_forge_token_through_askpass() {
    let setup = Setup::new().await;
    let agent = setup.agent("agent.sh", "cat > /dev/null\nexit 1");
    let (remote, seen) = guarded_remote();
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.repository = remote.clone();
            p.forge_kind = ForgeKind::Gitea;
            p.forge_repo = Some("acme/web".into());
            p.forge_url = Some("http://127.0.0.1:9".into());
        })
        .await;
    sqlx::query("update damascus_queue_settings set job_attempts = 1")
        .execute(&setup.db.pool)
        .await
        .unwrap();
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
    // base64("damascus:gitea-secret"): the user name for Gitea and the configured token.
    assert_eq!(
        seen.lock().unwrap().first().map(String::as_str),
        Some("Basic ZGFtYXNjdXM6Z2l0ZWEtc2VjcmV0")
    );
    let question = setup.open_question(item).await.1;
    assert!(question.contains("Authentication failed"), "{question}");
    assert!(!question.contains("gitea-secret"), "{question}");
}
