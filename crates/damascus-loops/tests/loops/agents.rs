//! Agents that misbehave: each is a fail verdict that says what went wrong.

use damascus_core::SpecMode;

use crate::support::{Setup, CLAUDE_OK, GREETING};

async fn build_failure(agent_body: &str, timeout_secs: i32) -> String {
    let setup = Setup::new().await;
    let agent = setup.agent("agent.sh", agent_body);
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 1;
            p.agent_timeout_secs = timeout_secs;
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
    assert!(setup
        .remote_git()
        .resolve(&format!("refs/heads/damascus/web-{item}"))
        .await
        .unwrap()
        .is_none());
    setup.open_question(item).await.1
}

#[tokio::test]
async fn an_agent_that_exits_non_zero() {
    let question = build_failure("cat > /dev/null\necho 'cannot do it' >&2\nexit 7", 20).await;
    assert!(question.contains("exited with 7"), "{question}");
}

#[tokio::test]
async fn an_agent_that_hangs_past_its_limit() {
    let question = build_failure("cat > /dev/null\nsleep 600", 1).await;
    assert!(question.contains("ran past its 1 s limit"), "{question}");
}

#[tokio::test]
async fn an_agent_that_writes_nothing() {
    let question = build_failure(&format!("cat > /dev/null\n{CLAUDE_OK}"), 20).await;
    assert!(question.contains("wrote nothing"), "{question}");
}

#[tokio::test]
async fn an_agent_whose_tools_were_denied() {
    let denied = r#"echo '{"type":"result","subtype":"success","is_error":false,"permission_denials":[{"tool_name":"Write","tool_use_id":"t1"}],"result":"I could not write"}'"#;
    let question = build_failure(
        &format!("cat > /dev/null\necho hello > hello.txt\n{denied}"),
        20,
    )
    .await;
    assert!(
        question.contains("denied tools it tried to use (Write)"),
        "{question}"
    );
}

#[tokio::test]
async fn an_agent_that_reports_an_error() {
    let errored = r#"echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"API Error: 500"}'"#;
    let question = build_failure(
        &format!("cat > /dev/null\necho hello > hello.txt\n{errored}"),
        20,
    )
    .await;
    assert!(
        question.contains("reported an error: API Error: 500"),
        "{question}"
    );
}
