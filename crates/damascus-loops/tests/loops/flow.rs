//! Items through all three phases on the local forge.

use damascus_core::SpecMode;

use crate::support::{Setup, CLAUDE_OK, GREETING};

#[tokio::test]
async fn a_story_goes_from_spec_to_a_merged_commit() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > prompt.seen\nrm prompt.seen\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup.project(&agent, SpecMode::Passthrough, |_| {}).await;
    let item = setup.ingest("Greeting", GREETING).await;

    let summary = setup.cycle().await;
    assert_eq!(summary.advanced(), 3, "{summary}");
    assert_eq!(setup.phase(item).await, "merged");
    assert_eq!(
        setup.steps(item).await,
        ["spec>build", "build>review", "review>merged"]
    );

    // The merge is a real merge commit on main holding the agent's file.
    let remote = setup.remote_git();
    assert_eq!(
        remote.run(&["show", "main:hello.txt"]).await.unwrap(),
        "hello"
    );
    let parents = remote
        .run(&["rev-list", "--parents", "-n1", "main"])
        .await
        .unwrap();
    assert_eq!(
        parents.split(' ').count(),
        3,
        "a merge commit has two parents"
    );
    let message = remote
        .run(&["log", "-1", "--format=%s", "main"])
        .await
        .unwrap();
    assert_eq!(message, format!("Merge damascus/web-{item}: Greeting"));

    // The item records its branch, PR, spec and the agent's cost.
    let (branch, pr, test_command, cost): (String, String, String, f64) = sqlx::query_as(
        "select branch, pr_url, test_command, cost_usd::float8 from work_items where id = $1",
    )
    .bind(item)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(branch, format!("damascus/web-{item}"));
    assert!(pr.starts_with("local://"), "{pr}");
    assert_eq!(test_command, "grep -qx hello hello.txt");
    assert!((cost - 0.25).abs() < 1e-9, "{cost}");
    let ledger: (String, String, f64) = sqlx::query_as(
        "select phase::text, source::text, usd::float8 from cost_ledger where item_id = $1",
    )
    .bind(item)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(ledger, ("build".into(), "agent".into(), 0.25));
}

#[tokio::test]
async fn failing_tests_bounce_until_the_budget_then_an_answer_resumes() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat > /dev/null\necho goodbye > hello.txt\ndate +%s%N >> attempts.txt\n{CLAUDE_OK}"
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 2;
            p.max_attempts_total = 5;
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
    // spec, then build/review pairs until the total budget of 5 runs is used.
    assert_eq!(
        setup.steps(item).await,
        [
            "spec>build",
            "build>review",
            "review>build",
            "build>review",
            "review>blocked"
        ]
    );
    let (issue, question) = setup.open_question(item).await;
    assert!(
        question.contains("grep -qx hello hello.txt") && question.contains("total budget"),
        "{question}"
    );
    // Nothing was merged.
    assert!(setup
        .remote_git()
        .run(&["show", "main:hello.txt"])
        .await
        .is_err());

    let answered = damascus_db::human::answer(
        &setup.db.pool,
        issue,
        "hello.txt must say hello, not goodbye",
        "test",
    )
    .await
    .unwrap();
    assert_eq!(answered.resumed_in, Some(damascus_core::Phase::Review));
    assert_eq!(setup.phase(item).await, "review");
    // The answer resumed the item; it fails again (the agent is stubborn) and blocks.
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
}
