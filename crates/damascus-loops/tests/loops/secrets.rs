//! The deployment's secrets never reach the database: an agent that prints them leaves
//! `***` in the stored verdict, the question and every event.

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

/// A Gitea-like http remote that refuses everyone, recording what they sent.
fn guarded_remote() -> (String, damascus_testdb::http::SeenAuthorizations) {
    let (port, seen) = damascus_testdb::http::basic_auth_remote();
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
