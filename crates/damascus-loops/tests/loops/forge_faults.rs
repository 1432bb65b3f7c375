//! Paid work is done once when the forge misbehaves in the ordinary ways: a rate limit
//! (Gitea's 429, GitHub's secondary limit) is waited out until the time it names, by
//! every worker, without using an attempt; a 500 retries the forge call, not the
//! agent; a pull request whose head lags behind a push is waited for before a merge.

use std::time::{Duration, SystemTime};

use damascus_core::{ForgeKind, SpecMode};
use serde_json::json;

use crate::faults::{deadline_of, rate_limit, Faults, Rule};
use crate::support::{Setup, CLAUDE_OK};

/// The story each item gets: its own file, no conflicts between items.
const STORY: &str = "Add this item's file.\n\n## Acceptance criteria\n- item-N.txt exists\n\n## Test command\n`true`\n";
const TEST: &str = "test -n \"$(ls item-*.txt)\"";

#[derive(Clone, Copy, Debug)]
enum Forge {
    Gitea,
    Github,
}

/// Which call the forge refuses first.
#[derive(Clone, Copy, Debug)]
enum Refused {
    PullCreation,
    Merge,
}

/// Writes the agent: logs each run, writes the item's file, and takes `slow` seconds
/// for the item `slow_item`.
fn write_agent(setup: &Setup, slow_item: i64, slow: u64) -> String {
    let runs = setup.dir.path().join("runs.txt");
    setup.agent(
        "agent.sh",
        &format!(
            r#"cat > /dev/null
echo "$DAMASCUS_ITEM_ID $DAMASCUS_TASK" >> '{runs}'
if [ "$DAMASCUS_ITEM_ID" = "{slow_item}" ]; then sleep {slow}; fi
echo "$DAMASCUS_ITEM_ID" > "item-$DAMASCUS_ITEM_ID.txt"
{CLAUDE_OK}"#,
            runs = runs.display()
        ),
    )
}

/// How often the agent built each item, by item id.
fn builds(setup: &Setup) -> std::collections::BTreeMap<i64, usize> {
    let mut builds = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(setup.dir.path().join("runs.txt"))
        .unwrap_or_default()
        .lines()
    {
        let (item, task) = line.split_once(' ').unwrap();
        if task == "build" {
            *builds.entry(item.parse().unwrap()).or_default() += 1;
        }
    }
    builds
}

/// A project `web` on a fake forge of `kind` that plays `faults`.
async fn project_on(
    setup: &Setup,
    kind: Forge,
    agent: &str,
    faults: Faults,
) -> Option<crate::github::FakeGithub> {
    match kind {
        Forge::Gitea => {
            crate::gitea::project_on_faulty_gitea(setup, agent, 0, faults, |p| {
                p.test_command = Some(TEST.into());
            })
            .await;
            None
        }
        Forge::Github => {
            let github = crate::github::FakeGithub::new(setup.remote.clone(), Duration::ZERO);
            let url = crate::github::serve_with(github.clone(), faults).await;
            setup
                .project(agent, SpecMode::Passthrough, |p| {
                    p.forge_kind = ForgeKind::Github;
                    p.forge_repo = Some("acme/web".into());
                    p.forge_url = Some(url.clone());
                    p.test_command = Some(TEST.into());
                })
                .await;
            Some(github)
        }
    }
}

fn config_for(setup: &Setup) -> damascus_loops::LoopsConfig {
    let mut config = setup.loops_config(None);
    config.github_token = Some("ghp_test".into());
    config
}

/// Runs one worker pool, or two side by side (each its own registered worker, sharing
/// only the database), until every item merged, or fails after `within`. Returns what
/// the items were seen waiting for between the runs (`damascus show`'s "waiting").
async fn until_merged(
    setup: &Setup,
    config: damascus_loops::LoopsConfig,
    two_workers: bool,
    items: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut waits = Vec::new();
    loop {
        if two_workers {
            tokio::join!(
                setup.cycle_at(config.clone(), 2),
                setup.cycle_at(config.clone(), 2)
            );
        } else {
            setup.cycle_at(config.clone(), 2).await;
        }
        if setup.phase_counts().await == [format!("merged={items}")] {
            return waits;
        }
        let ids: Vec<i64> = sqlx::query_scalar("select id from work_items order by id")
            .fetch_all(&setup.db.pool)
            .await
            .unwrap();
        for id in ids {
            if let Some(wait) = damascus_db::items::waiting(&setup.db.pool, id)
                .await
                .unwrap()
            {
                waits.push(wait.reason);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all merged within {within:?}: {:?}",
            setup.phase_counts().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count_events(setup: &Setup, kind: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events_outbox where kind = $1")
        .bind(kind)
        .fetch_one(&setup.db.pool)
        .await
        .unwrap()
}

/// Two stories, two worker pools; the forge answers the first `refused` call with a
/// rate limit that says to come back in `secs` seconds. The second item's agent takes
/// longer, so its own forge calls come while the deadline holds.
async fn rate_limited(kind: Forge, refused: Refused) {
    const SECS: u64 = 3;
    let setup = Setup::new().await;
    let (method, path, status) = match (kind, refused) {
        (Forge::Gitea, Refused::PullCreation) => ("POST", "/pulls", 429),
        (Forge::Gitea, Refused::Merge) => ("POST", "/merge", 429),
        (Forge::Github, Refused::PullCreation) => ("POST", "/pulls", 403),
        (Forge::Github, Refused::Merge) => ("PUT", "/merge", 403),
    };
    let faults = Faults::with(vec![rate_limit(method, path, status, SECS)]);
    let agent = write_agent(&setup, 0, 0);
    project_on(&setup, kind, &agent, faults.clone()).await;
    let first = setup.ingest("First", STORY).await;
    let second = setup.ingest("Second", STORY).await;
    write_agent(&setup, second, 2);
    let waits = until_merged(&setup, config_for(&setup), true, 2, Duration::from_secs(90)).await;
    assert!(
        waits
            .iter()
            .any(|w| w.contains("waiting for 127.0.0.1:") && w.contains("'s rate limit until")),
        "the wait is visible with its forge and time: {waits:?}"
    );

    let limited = faults.faulted();
    assert_eq!(
        limited.len(),
        1,
        "the rate limit was played once: {limited:?}"
    );
    let told_at = &limited[0];
    let reached = faults.between(told_at.at, deadline_of(told_at, SECS));
    assert!(
        reached.is_empty(),
        "{kind:?}: requests reached the forge before its deadline: {reached:?}"
    );
    assert_eq!(
        builds(&setup),
        [(first, 1), (second, 1)].into(),
        "the agent ran once per story"
    );
    assert_eq!(
        count_events(&setup, "job.retry_scheduled").await,
        0,
        "no run was counted as a retry"
    );
    assert!(count_events(&setup, "job.waiting").await >= 1);
    let totals: Vec<i32> = sqlx::query_scalar("select attempts_total from work_items order by id")
        .fetch_all(&setup.db.pool)
        .await
        .unwrap();
    assert_eq!(
        totals,
        [3, 3],
        "spec, build and review once each: no attempt used by the wait"
    );
}

#[tokio::test]
async fn a_gitea_rate_limit_on_the_pull_request_is_waited_out() {
    rate_limited(Forge::Gitea, Refused::PullCreation).await;
}

#[tokio::test]
async fn a_gitea_rate_limit_on_the_merge_is_waited_out() {
    rate_limited(Forge::Gitea, Refused::Merge).await;
}

#[tokio::test]
async fn a_github_secondary_rate_limit_on_the_pull_request_is_waited_out() {
    rate_limited(Forge::Github, Refused::PullCreation).await;
}

#[tokio::test]
async fn a_github_secondary_rate_limit_on_the_merge_is_waited_out() {
    rate_limited(Forge::Github, Refused::Merge).await;
}

/// A forge that answers the pull request's creation with 500 three times: the forge
/// call is retried, and the agent's work is kept.
#[tokio::test]
async fn a_forge_error_after_the_agent_ran_retries_the_forge_call_not_the_agent() {
    let setup = Setup::new().await;
    let faults = Faults::with(vec![Rule {
        method: "POST",
        path_suffix: "/pulls",
        times: 3,
        status: 500,
        headers: vec![],
        body: json!({"message": "Internal Server Error"}),
    }]);
    let agent = write_agent(&setup, 0, 0);
    project_on(&setup, Forge::Gitea, &agent, faults.clone()).await;
    let item = setup.ingest("Only", STORY).await;
    until_merged(
        &setup,
        config_for(&setup),
        false,
        1,
        Duration::from_secs(60),
    )
    .await;
    let faulted: Vec<(String, String)> = faults
        .faulted()
        .into_iter()
        .map(|s| (s.method, s.path))
        .collect();
    assert_eq!(
        faulted,
        vec![("POST".to_owned(), "/api/v1/repos/acme/web/pulls".to_owned()); 3]
    );
    assert_eq!(builds(&setup), [(item, 1)].into(), "the agent ran once");
    assert_eq!(count_events(&setup, "job.retry_scheduled").await, 3);
}

/// Six stories into one repository on a GitHub whose pull requests show a push two
/// seconds late: every merge names the commit pushed once the PR shows it, so none is
/// refused with 409 and no push is rejected for a stale lease.
#[tokio::test]
async fn a_lagging_pull_request_head_is_waited_for_before_the_merge() {
    use crate::merge_queue::{changelog_agent, changelog_case, changelog_setup, CHANGELOG_TEST};
    let setup = changelog_setup().await;
    let agent = changelog_agent(&setup);
    let faults = Faults::default();
    let github = crate::github::FakeGithub::new(setup.remote.clone(), Duration::from_secs(2));
    let url = crate::github::serve_with(github.clone(), faults.clone()).await;
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.forge_kind = ForgeKind::Github;
            p.forge_repo = Some("acme/web".into());
            p.forge_url = Some(url.clone());
            p.test_command = Some(CHANGELOG_TEST.into());
        })
        .await;
    let started = SystemTime::now();
    let items = changelog_case(&setup, 6, config_for(&setup)).await;
    eprintln!(
        "6 stories with a 2 s head lag: {:.1} s",
        started.elapsed().unwrap().as_secs_f64()
    );
    let refused: Vec<_> = faults
        .seen()
        .into_iter()
        .filter(|s| s.status == 409)
        .collect();
    assert!(
        refused.is_empty(),
        "merges refused as head modified: {refused:?}"
    );
    assert_eq!(github.merges().len(), items.len(), "one merge per story");
    let retries: Vec<String> = sqlx::query_scalar(
        "select payload->>'reason' from events_outbox where kind = 'job.retry_scheduled'",
    )
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(
        retries,
        Vec::<String>::new(),
        "no push was rejected, nothing was retried"
    );
}
