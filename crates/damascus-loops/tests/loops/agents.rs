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

/// Claude Code stopped by `--max-budget-usd` exits 1 with a full result: what it spent
/// is recorded per model, with its tokens, although the build failed.
#[tokio::test]
async fn an_agent_stopped_by_its_budget_records_what_it_spent() {
    let capped = r#"echo '{"type":"result","subtype":"error_max_budget_usd","is_error":true,"total_cost_usd":0.0128,"usage":{"input_tokens":5,"output_tokens":40},"modelUsage":{"claude-sonnet-4-5":{"inputTokens":5,"outputTokens":40,"cacheReadInputTokens":100,"costUSD":0.0128}}}'"#;
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{capped}\nexit 1"),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 1;
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
    let ledger: Vec<(String, String, i64, i64, f64)> = sqlx::query_as(
        "select phase::text, model, tokens_in, tokens_out, usd::float8 from cost_ledger where item_id = $1",
    )
    .bind(item)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(
        ledger,
        [("build".into(), "claude-sonnet-4-5".into(), 105, 40, 0.0128)]
    );
    let spent: f64 = sqlx::query_scalar("select cost_usd::float8 from work_items where id = $1")
        .bind(item)
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    assert!((spent - 0.0128).abs() < 1e-9, "{spent}");
}

#[tokio::test]
async fn an_agent_killed_at_its_limit_leaves_a_ledger_row_that_says_its_spend_is_unknown() {
    let setup = Setup::new().await;
    let agent = setup.agent("agent.sh", "cat > /dev/null\nsleep 600");
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 1;
            p.agent_timeout_secs = 1;
            p.cost_budget_usd = Some(0.5);
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    let question = setup.open_question(item).await.1;
    assert!(
        question.contains("may have spent up to the 0.5000 USD reserved for it"),
        "{question}"
    );
    let rows: Vec<(String, f64)> =
        sqlx::query_as("select model, usd::float8 from cost_ledger where item_id = $1")
            .bind(item)
            .fetch_all(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(
            format!(
                "{} (spend unknown: killed at its time limit before it reported)",
                agent
            ),
            0.5
        )],
        "the row holds what was reserved for the run, so the caps keep counting it"
    );
}

/// A capped project whose agent reports only tokens, with a model this worker cannot
/// price (its price came from another process's `--agent-price`), is not run: a
/// person is asked, with how to give the price, before anything is spent.
#[tokio::test]
async fn a_model_the_worker_cannot_price_under_a_cap_is_refused_before_the_run() {
    let setup = Setup::new().await;
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent = damascus_core::AgentKind::Codex;
            p.agent_command = None;
            p.agent_model = Some("house-coder".into());
            p.cost_budget_usd = Some(1.0);
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    let question = setup.blocked_question(item).await;
    assert!(
        question.contains("model \"house-coder\" has no price")
            && question.contains("--agent-price house-coder=INPUT/CACHED/OUTPUT"),
        "{question}"
    );
    assert_eq!(setup.ledger_rows(item).await, 0);
    // With the price given to the worker, the same project runs (here its agent is
    // not installed under that name, which is the next thing it says).
    let mut config = setup.loops_config(None);
    config.prices =
        damascus_core::prices::PriceTable::with_overrides(&["house-coder=1/0.1/5".into()]).unwrap();
    config.agent_env = vec![("PATH".into(), "/nonexistent".into())];
    let issue = setup.open_question(item).await.0;
    damascus_db::human::answer(&setup.db.pool, issue, "priced now", "test")
        .await
        .unwrap();
    setup.cycle_with(config).await;
    let question = setup.open_question(item).await.1;
    assert!(
        question.contains("npm install -g @openai/codex"),
        "{question}"
    );
}
