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

/// A review that fails until the budget runs out blocks with a question; the answer
/// sends the item back to build (not to the same failing test), the agent's prompt
/// carries the question, the failing output and the answer, and the item merges.
#[tokio::test]
async fn an_answer_to_a_failed_review_rebuilds_with_the_guidance() {
    let setup = Setup::new().await;
    let prompts = setup.dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    // Writes farewell.txt only when its prompt says so, as an agent that needs to be
    // told would.
    let agent = setup.agent(
        "agent.sh",
        &format!(
            r#"prompt=$(cat)
n=$(ls '{dir}' | wc -l)
printf '%s' "$prompt" > '{dir}'/prompt-$n.txt
case "$prompt" in
  *"Write farewell.txt"*) echo goodbye > farewell.txt ;;
esac
date +%s%N >> attempts.txt
{CLAUDE_OK}"#,
            dir = prompts.display()
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.max_attempts_per_phase = 2;
            p.max_attempts_total = 3;
            p.rounds_per_answer = 2;
        })
        .await;
    let farewell = "Say goodbye.\n\n## Acceptance criteria\n- farewell.txt says goodbye\n\n## Test command\n`grep -qx goodbye farewell.txt`\n";
    let item = setup.ingest("Farewell", farewell).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "blocked");
    assert_eq!(
        setup.steps(item).await,
        ["spec>build", "build>review", "review>blocked"]
    );
    let (issue, question) = setup.open_question(item).await;
    assert!(
        question.contains("grep -qx goodbye farewell.txt") && question.contains("total budget"),
        "{question}"
    );
    let asked = damascus_db::items::human_issues_for_item(&setup.db.pool, item)
        .await
        .unwrap();
    assert_eq!(
        asked[0].phase,
        damascus_core::Phase::Review,
        "a retry re-runs review"
    );
    assert_eq!(
        asked[0].on_answer,
        damascus_core::Phase::Build,
        "an answer rebuilds"
    );

    let answered = damascus_db::human::answer(
        &setup.db.pool,
        issue,
        "Write farewell.txt with the single line goodbye.",
        "ana",
    )
    .await
    .unwrap();
    assert_eq!(answered.resumed_in, Some(damascus_core::Phase::Build));
    assert_eq!(setup.phase(item).await, "build");
    // Three runs used; two rounds of build and review granted.
    let budget: (i32, i32, i32) = sqlx::query_as(
        "select attempts_total, max_attempts_total, phase_attempts from work_items where id = $1",
    )
    .bind(item)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(budget, (3, 7, 0));
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "merged");
    // No review ran between the answer and the build that followed it.
    assert_eq!(
        setup.steps(item).await,
        [
            "spec>build",
            "build>review",
            "review>blocked",
            "blocked>build",
            "build>review",
            "review>merged"
        ]
    );
    // The rebuild's prompt quoted the question, the failing output and the answer, once.
    let last = std::fs::read_to_string(prompts.join("prompt-1.txt")).unwrap();
    assert_eq!(
        last.matches("Write farewell.txt with the single line goodbye.")
            .count(),
        1,
        "{last}"
    );
    assert!(
        last.contains("## Guidance from the people responsible"),
        "{last}"
    );
    assert!(last.contains("### ana answered"), "{last}");
    assert!(last.contains("total budget"), "{last}");
    assert_eq!(
        setup
            .remote_git()
            .run(&["show", "main:farewell.txt"])
            .await
            .unwrap(),
        "goodbye"
    );
}

/// Budgets are checked before each agent call: once the project's daily budget is
/// spent, the next build does not start and asks a person instead.
#[tokio::test]
async fn a_spent_daily_budget_stops_the_next_agent_call() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho run >> ../../../agent-runs.txt\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.daily_cost_budget_usd = Some(0.2)
        })
        .await;
    let first = setup.ingest("Greeting", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(first).await, "merged");
    let second = setup.ingest("Greeting again", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(second).await, "blocked");
    let question = setup.open_question(second).await.1;
    assert!(
        question.contains("daily budget of 0.2000 USD"),
        "{question}"
    );
    let runs = std::fs::read_to_string(setup.dir.path().join("data/agent-runs.txt")).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "the agent ran for the first item only"
    );
}

/// A worker dies after its build pushed but before the verdict was written. After the
/// lease the job runs again elsewhere: it reuses the branch and the PR, and the change
/// is merged once.
#[tokio::test]
async fn a_build_rerun_after_a_lost_worker_reuses_branch_and_pr() {
    use damascus_queue::{JobContext, PhaseRunner};
    use std::time::Duration;

    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!("cat > /dev/null\necho hello > hello.txt\n{CLAUDE_OK}"),
    );
    setup.project(&agent, SpecMode::Passthrough, |_| {}).await;
    let item = setup.ingest("Greeting", GREETING).await;
    // The spec phase, by hand: claim and finish.
    let info = damascus_db::jobs::WorkerInfo {
        host: "test".into(),
        pid: 1,
        lease: Duration::from_secs(30),
    };
    let worker = damascus_db::jobs::register_worker(&setup.db.pool, &info, Some(2))
        .await
        .unwrap()
        .id;
    let loops = damascus_loops::Loops::new(setup.loops_config(None)).unwrap();
    let run = |job: &damascus_db::jobs::ClaimedJob| {
        let target = job.target.unwrap();
        loops.run(JobContext {
            job_id: job.job_id,
            claim: job.claim,
            item_id: target.item_id,
            phase: target.phase,
            attempt: target.attempt,
            pool: setup.db.pool.clone(),
            cancel: Default::default(),
        })
    };
    let spec_job = damascus_db::jobs::claim(&setup.db.pool, worker, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let report = run(&spec_job[0]).await;
    damascus_db::jobs::finish(&setup.db.pool, worker, &spec_job[0], &report)
        .await
        .unwrap();

    // The doomed worker builds (branch pushed, PR opened) and never records it.
    let doomed = damascus_db::jobs::claim(&setup.db.pool, worker, 1, Duration::from_millis(200))
        .await
        .unwrap();
    let lost_report = run(&doomed[0]).await;
    assert!(
        matches!(lost_report.verdict, damascus_core::Verdict::Pass(_)),
        "{lost_report:?}"
    );
    let branch = format!("refs/heads/damascus/web-{item}");
    let pushed = setup.remote_git().resolve(&branch).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another worker takes over after the lease and finishes the item.
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "merged");
    let remote = setup.remote_git();
    assert_eq!(
        remote.resolve(&branch).await.unwrap().unwrap(),
        pushed,
        "the rerun reused the pushed branch"
    );
    assert_eq!(
        remote
            .run(&["rev-list", "--count", "--merges", "main"])
            .await
            .unwrap(),
        "1"
    );
    assert_eq!(
        remote
            .run(&["rev-list", "--count", "main^1..main^2"])
            .await
            .unwrap(),
        "1"
    );
    // The lost worker's late verdict is refused and changes nothing.
    assert_eq!(
        damascus_db::jobs::finish(&setup.db.pool, worker, &doomed[0], &lost_report)
            .await
            .unwrap(),
        damascus_db::jobs::Ended::LostClaim
    );
    assert_eq!(
        setup.steps(item).await,
        ["spec>build", "build>review", "review>merged"]
    );
}

/// Cancelling an item while its agent runs kills the agent and everything it started,
/// and the item ends cancelled with its event.
#[tokio::test]
async fn cancel_kills_a_running_agent_and_leaves_no_orphan() {
    use std::time::Duration;

    let setup = Setup::new().await;
    let pids = setup.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat > /dev/null\necho $$ > {0}/agent.pid\nsleep 300 &\necho $! > {0}/child.pid\nwait",
            pids.display()
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.agent_timeout_secs = 600
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let mut queue = damascus_queue::QueueConfig {
        concurrency: Some(2),
        ..damascus_queue::QueueConfig::default()
    };
    queue.lease = Duration::from_secs(30);
    let loops = damascus_loops::Loops::new(setup.loops_config(None)).unwrap();
    let workers =
        damascus_queue::WorkerPool::start(setup.db.pool.clone(), queue, std::sync::Arc::new(loops))
            .await
            .unwrap();
    let read_pid = |name: &str| {
        std::fs::read_to_string(pids.join(name))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read_pid("child.pid").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (agent_pid, child_pid) = (
        read_pid("agent.pid").unwrap(),
        read_pid("child.pid").unwrap(),
    );

    let cancelled = damascus_db::operator::cancel(&setup.db.pool, item, "test")
        .await
        .unwrap();
    assert!(cancelled.was_running);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(agent_pid) || alive(child_pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent or its child survived the cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary = workers.shutdown().await;
    assert_eq!(summary.lost_claims, 1, "{summary}");
    assert_eq!(setup.phase(item).await, "cancelled");
    let kinds: Vec<String> =
        sqlx::query_scalar("select kind from events_outbox where item_id = $1 order by id")
            .bind(item)
            .fetch_all(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(kinds.last().map(String::as_str), Some("item.cancelled"));
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from damascus_jobs")
            .fetch_one(&setup.db.pool)
            .await
            .unwrap(),
        0
    );
}

/// Two items change the same file: the one at the head of the queue second finds its
/// branch conflicting with main. The conflict is resolved there, by the agent, with
/// the conflicting files named in its prompt; the item never goes back to build, and
/// its resolution is what is tested and merged (no markers reach main).
#[tokio::test]
async fn a_conflict_at_the_head_of_the_queue_is_resolved_there() {
    let setup = Setup::new().await;
    let prompts = tempfile::tempdir().unwrap();
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat >> '{}'/prompts-$DAMASCUS_ITEM_ID.txt\necho \"$DAMASCUS_TASK\" >> '{}'/tasks-$DAMASCUS_ITEM_ID.txt\necho \"from item $DAMASCUS_ITEM_ID\" > shared.txt\necho hello > hello.txt\n{CLAUDE_OK}",
            prompts.path().display(),
            prompts.path().display()
        ),
    );
    setup.project(&agent, SpecMode::Passthrough, |_| {}).await;
    let first = setup.ingest("First", GREETING).await;
    let second = setup.ingest("Second", GREETING).await;
    setup.cycle().await;
    assert_eq!(setup.phase(first).await, "merged");
    assert_eq!(setup.phase(second).await, "merged");
    for item in [first, second] {
        assert_eq!(
            setup.steps(item).await,
            ["spec>build", "build>review", "review>merged"]
        );
    }
    let read = |name: &str, id: i64| {
        std::fs::read_to_string(prompts.path().join(format!("{name}-{id}.txt"))).unwrap_or_default()
    };
    let (loser, winner) = if read("tasks", first).lines().count() > 1 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(read("tasks", loser), "build\nresolve-conflicts\n");
    assert_eq!(read("tasks", winner), "build\n");
    let loser_prompts = read("prompts", loser);
    assert_eq!(
        loser_prompts.matches("## Conflicts with main").count(),
        1,
        "{loser_prompts}"
    );
    assert!(loser_prompts.contains("have conflicts") && loser_prompts.contains("shared.txt"));
    assert!(loser_prompts.contains("head of the merge queue"));
    assert!(!read("prompts", winner).contains("Conflicts with"));
    // main holds the resolution, without conflict markers, and both items' merges.
    let remote = setup.remote_git();
    assert_eq!(
        remote.run(&["show", "main:shared.txt"]).await.unwrap(),
        format!("from item {loser}")
    );
    assert_eq!(
        remote
            .run(&["rev-list", "--count", "--merges", "main"])
            .await
            .unwrap(),
        "3",
        "two merges into main and the head's merge of main into the branch"
    );
    // The agent's cost of resolving is the loser's, in review.
    let review_cost: f64 = sqlx::query_scalar(
        "select coalesce(sum(usd), 0)::float8 from cost_ledger where item_id = $1 and phase = 'review'",
    )
    .bind(loser)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!((review_cost - 0.25).abs() < 1e-9, "{review_cost}");
}

/// An agent that leaves the conflict markers in place fails its build with a reason
/// that names the files; nothing with markers is pushed, let alone merged.
#[tokio::test]
async fn conflict_markers_left_by_the_agent_fail_the_build() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat > /dev/null\n[ -f shared.txt ] || echo \"from item $DAMASCUS_ITEM_ID\" > shared.txt\necho hello > hello.txt\n{CLAUDE_OK}"
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| p.max_attempts_total = 6)
        .await;
    let first = setup.ingest("First", GREETING).await;
    let second = setup.ingest("Second", GREETING).await;
    setup.cycle().await;
    let phases = [setup.phase(first).await, setup.phase(second).await];
    assert!(
        phases.contains(&"merged".to_owned()) && phases.contains(&"blocked".to_owned()),
        "{phases:?}"
    );
    let loser = if phases[0] == "blocked" {
        first
    } else {
        second
    };
    let reasons: Vec<Option<String>> = sqlx::query_scalar(
        "select payload->>'reason' from events_outbox where item_id = $1 and kind = 'item.phase_changed' order by id",
    )
    .bind(loser)
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert!(
        reasons
            .iter()
            .flatten()
            .any(|r| r.contains("the agent left conflict markers in shared.txt")),
        "{reasons:?}"
    );
    let remote = setup.remote_git();
    let branch = remote
        .run(&["show", &format!("damascus/web-{loser}:shared.txt")])
        .await
        .unwrap();
    assert!(!branch.contains("<<<<<<<"), "{branch}");
    assert!(!remote
        .run(&["show", "main:shared.txt"])
        .await
        .unwrap()
        .contains("<<<<<<<"));
}
