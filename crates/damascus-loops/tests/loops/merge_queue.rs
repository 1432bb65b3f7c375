//! The merge queue: many stories into one repository at once, each merge tested as it
//! will land, no agent run for a branch that merely fell behind, and main never red.

use damascus_core::SpecMode;
use damascus_loops::LoopsConfig;

use crate::support::{Setup, CLAUDE_OK};

/// A story whose spec is itself; the project's test command judges it.
const STORY: &str =
    "Add the change.\n\n## Acceptance criteria\n- the change is listed in CHANGELOG.md\n";

/// Every story adds its own file and one line to CHANGELOG.md; the agent resolves a
/// conflicted CHANGELOG by keeping every line, as a coding agent would. It records
/// each run (item and task) in `runs.txt` next to the repository.
pub fn changelog_agent(setup: &Setup) -> String {
    let runs = setup.dir.path().join("runs.txt");
    setup.agent(
        "changelog-agent.sh",
        &format!(
            r#"cat > /dev/null
echo "$DAMASCUS_ITEM_ID $DAMASCUS_TASK" >> '{runs}'
if [ "$DAMASCUS_TASK" = resolve-conflicts ]; then
  grep -v -e '^<<<<<<< ' -e '^=======$' -e '^>>>>>>> ' CHANGELOG.md > CHANGELOG.tmp
  mv CHANGELOG.tmp CHANGELOG.md
else
  echo "- item $DAMASCUS_ITEM_ID" >> CHANGELOG.md
  echo "$DAMASCUS_ITEM_ID" > "change-$DAMASCUS_ITEM_ID.txt"
fi
{CLAUDE_OK}"#,
            runs = runs.display()
        ),
    )
}

/// Passes when CHANGELOG.md has no markers and one line for each change file.
pub const CHANGELOG_TEST: &str = "! grep -q '^<<<<<<<' CHANGELOG.md && [ \"$(grep -c '^- item' CHANGELOG.md)\" = \"$(ls | grep -c '^change-')\" ]";

/// The agent's runs, as (item, task).
fn agent_runs(setup: &Setup) -> Vec<(i64, String)> {
    std::fs::read_to_string(setup.dir.path().join("runs.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (item, task) = l.split_once(' ').unwrap();
            (item.parse().unwrap(), task.to_owned())
        })
        .collect()
}

pub async fn changelog_case(setup: &Setup, stories: usize, config: LoopsConfig) -> Vec<i64> {
    let mut items = Vec::new();
    for n in 0..stories {
        items.push(setup.ingest(&format!("Change {n}"), STORY).await);
    }
    for _ in 0..5 {
        setup.cycle_at(config.clone(), 4).await;
        if setup.phase_counts().await == [format!("merged={stories}")] {
            break;
        }
    }
    assert_eq!(
        setup.phase_counts().await,
        [format!("merged={stories}")],
        "every story merged"
    );
    let changelog = setup
        .remote_git()
        .run(&["show", "main:CHANGELOG.md"])
        .await
        .unwrap();
    for item in &items {
        assert!(
            changelog.lines().any(|l| l == format!("- item {item}")),
            "{item} is in the changelog:\n{changelog}"
        );
    }
    assert_eq!(
        changelog.lines().filter(|l| l.starts_with("- ")).count(),
        stories
    );
    // One build per story; the agent ran again only to resolve a real conflict at the
    // head of the queue, at most once per story.
    let runs = agent_runs(setup);
    let builds = runs.iter().filter(|(_, t)| t == "build").count();
    let resolves = runs
        .iter()
        .filter(|(_, t)| t == "resolve-conflicts")
        .count();
    assert_eq!(builds, stories, "{runs:?}");
    assert_eq!(runs.len(), stories + resolves);
    for item in &items {
        assert!(
            runs.iter().filter(|(i, _)| i == item).count() <= 2,
            "{runs:?}"
        );
        assert_eq!(
            setup.steps(*item).await,
            ["spec>build", "build>review", "review>merged"]
        );
    }
    // Every commit main ever had passes the test.
    assert!(setup.assert_main_history_passes(CHANGELOG_TEST).await > stories);
    items
}

pub async fn changelog_setup() -> Setup {
    Setup::with_files(&[("README.md", "demo\n"), ("CHANGELOG.md", "# Changelog\n")]).await
}

#[tokio::test]
async fn forty_stories_that_all_touch_the_changelog_all_merge() {
    let setup = changelog_setup().await;
    let agent = changelog_agent(&setup);
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some(CHANGELOG_TEST.into());
        })
        .await;
    changelog_case(&setup, 40, setup.loops_config(None)).await;
    // The queue is empty, and it left a trace in each item's events.
    let queued: i64 = sqlx::query_scalar("select count(*) from merge_queue")
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    let entered: i64 =
        sqlx::query_scalar("select count(*) from events_outbox where kind = 'merge_queue.entered'")
            .fetch_one(&setup.db.pool)
            .await
            .unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "select distinct payload->>'to' from events_outbox where kind = 'merge_queue.left'",
    )
    .fetch_all(&setup.db.pool)
    .await
    .unwrap();
    assert_eq!(entered, 40);
    assert_eq!(left, ["merged"]);
}

/// Holds the queue of the setup's repository: a named lock row in the queue's name,
/// held by a cancelled item, so that items reaching review wait in it, in the order
/// they arrive.
async fn hold_the_queue(setup: &Setup) -> String {
    let holder = setup.ingest("Holds the queue", STORY).await;
    sqlx::query("update work_items set phase = 'cancelled' where id = $1")
        .bind(holder)
        .execute(&setup.db.pool)
        .await
        .unwrap();
    let name: String = sqlx::query_scalar(
        "select damascus_merge_queue_lock(repository, default_branch) from projects where name = 'web'",
    )
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    sqlx::query("insert into named_locks (name, item_id) values ($1, $2)")
        .bind(&name)
        .bind(holder)
        .execute(&setup.db.pool)
        .await
        .unwrap();
    name
}

async fn release_the_queue(setup: &Setup, name: &str) {
    sqlx::query("delete from named_locks where name = $1")
        .bind(name)
        .execute(&setup.db.pool)
        .await
        .unwrap();
}

/// A batch of four whose third breaks the tests: the batch fails, bisection finds the
/// third (two more test runs), the first two merge together, the third goes back to
/// build with the failing output, and the fourth merges in its own turn.
#[tokio::test]
async fn a_batch_of_four_whose_third_fails_is_bisected() {
    let setup = Setup::new().await;
    let test_runs = setup.dir.path().join("test-runs.txt");
    let agent = setup.agent(
        "agent.sh",
        &format!(
            r##"prompt=$(cat)
case "$prompt" in
  *"previous attempt failed"*) echo "cannot fix it" >&2; exit 3 ;;
  *"# Break the build"*) echo broken > broken.txt ;;
esac
echo "$DAMASCUS_ITEM_ID" > "change-$DAMASCUS_ITEM_ID.txt"
{CLAUDE_OK}"##
        ),
    );
    let test_command = format!(
        "echo run >> '{}'; if [ -f broken.txt ]; then echo 'broken.txt must not exist'; exit 1; fi",
        test_runs.display()
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some(test_command.clone());
            p.max_attempts_per_phase = 1;
        })
        .await;
    let lock = hold_the_queue(&setup).await;
    let mut items = Vec::new();
    for title in ["One", "Two", "Break the build", "Four"] {
        let item = setup.ingest(title, STORY).await;
        setup.cycle().await;
        assert_eq!(setup.phase(item).await, "review");
        items.push(item);
    }
    let positions: Vec<i64> =
        sqlx::query_scalar("select item_id from damascus_merge_queue order by position")
            .fetch_all(&setup.db.pool)
            .await
            .unwrap();
    assert_eq!(positions, items, "the queue keeps the order of arrival");
    release_the_queue(&setup, &lock).await;
    setup.cycle().await;

    let [one, two, three, four] = items[..] else {
        unreachable!()
    };
    for item in [one, two, four] {
        assert_eq!(setup.phase(item).await, "merged", "item {item}");
    }
    // The third went back to build with the failing output, and (its agent giving up)
    // blocked there; it never reached main.
    assert_eq!(
        setup.steps(three).await,
        [
            "spec>build",
            "build>review",
            "review>build",
            "build>blocked"
        ]
    );
    let (reason, log_tail): (String, String) = sqlx::query_as(
        "select payload->>'reason', payload->>'log_tail' from events_outbox
         where item_id = $1 and kind = 'item.phase_changed' and payload->>'from' = 'review'",
    )
    .bind(three)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!(
        reason.contains("exited with 1") && reason.contains("merge queue"),
        "{reason}"
    );
    assert!(log_tail.contains("broken.txt must not exist"), "{log_tail}");
    // The batch's test, two bisection steps (one and two pass, three fails), then the
    // fourth alone.
    let runs = std::fs::read_to_string(&test_runs).unwrap().lines().count();
    assert_eq!(runs, 4);
    // One and two merged together, as two merges onto main; four after them.
    let remote = setup.remote_git();
    let subjects = remote
        .run(&["log", "--first-parent", "--format=%s", "main"])
        .await
        .unwrap();
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        [
            format!("Merge damascus/web-{four}: Four"),
            format!("Merge damascus/web-{two}: Two"),
            format!("Merge damascus/web-{one}: One"),
            "Initial commit".to_owned(),
        ]
    );
    assert!(remote.run(&["show", "main:broken.txt"]).await.is_err());
    setup
        .assert_main_history_passes("test ! -f broken.txt")
        .await;
}

/// Two changes that each pass alone and fail together (each claims the same id, and
/// the test allows one entry per id): main never goes red; one merges, the other goes
/// back to build with the failing test's output, and its agent, told so, picks
/// another id.
#[tokio::test]
async fn a_semantic_conflict_never_reaches_main() {
    for batch_size in [1, 4] {
        let setup = Setup::new().await;
        let prompts = setup.dir.path().join("prompts");
        std::fs::create_dir_all(&prompts).unwrap();
        let agent = setup.agent(
            "agent.sh",
            &format!(
                r#"cat > '{prompts}'/prompt-$DAMASCUS_ITEM_ID-$(date +%s%N).txt
mkdir -p entries
if grep -q 'duplicate id: id-7' '{prompts}'/prompt-$DAMASCUS_ITEM_ID-*.txt; then
  echo "id-$DAMASCUS_ITEM_ID" > entries/$DAMASCUS_ITEM_ID.txt
else
  echo "id-7" > entries/$DAMASCUS_ITEM_ID.txt
fi
{CLAUDE_OK}"#,
                prompts = prompts.display()
            ),
        );
        let test = "d=$(cat entries/*.txt 2>/dev/null | sort | uniq -d); if [ -n \"$d\" ]; then echo \"duplicate id: $d\"; exit 1; fi";
        setup
            .project(&agent, SpecMode::Passthrough, |p| {
                p.test_command = Some(test.into());
                p.merge_batch_size = batch_size;
            })
            .await;
        let lock = hold_the_queue(&setup).await;
        let first = setup.ingest("First", STORY).await;
        let second = setup.ingest("Second", STORY).await;
        setup.cycle().await;
        release_the_queue(&setup, &lock).await;
        setup.cycle().await;

        assert_eq!(
            setup.phase(first).await,
            "merged",
            "batch size {batch_size}"
        );
        assert_eq!(
            setup.phase(second).await,
            "merged",
            "batch size {batch_size}"
        );
        // Whichever reached the head first merges as it is; the other is sent back.
        let (winner, loser) = if setup.steps(first).await.len() == 3 {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(
            setup.steps(winner).await,
            ["spec>build", "build>review", "review>merged"]
        );
        assert_eq!(
            setup.steps(loser).await,
            [
                "spec>build",
                "build>review",
                "review>build",
                "build>review",
                "review>merged"
            ],
            "batch size {batch_size}"
        );
        // The loser's second build's prompt carried the failing output.
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&prompts).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("prompt-{loser}-"))
            {
                seen.push(std::fs::read_to_string(path).unwrap());
            }
        }
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter().any(|p| p.contains("duplicate id: id-7")),
            "{seen:?}"
        );
        setup.assert_main_history_passes(test).await;
    }
}

/// A push to main from outside the queue while the head is being tested: the merge is
/// refused as untested, and the head is brought up to date and tested again; no agent
/// runs again, and the item does not go back to build.
#[tokio::test]
async fn a_push_to_main_from_outside_sends_the_head_back_to_its_update() {
    let setup = Setup::new().await;
    let runs = setup.dir.path().join("agent-runs.txt");
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat > /dev/null\necho run >> '{}'\necho hello > hello.txt\n{CLAUDE_OK}",
            runs.display()
        ),
    );
    // An outsider's clone with a commit ready to push to main.
    let outside = setup.dir.path().join("outside");
    let git = |args: &[&str], dir: &std::path::Path| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=Outsider", "-c", "user.email=o@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    git(
        &[
            "clone",
            "--quiet",
            &setup.remote.to_string_lossy(),
            &outside.to_string_lossy(),
        ],
        setup.dir.path(),
    );
    std::fs::write(outside.join("outside.txt"), "pushed past the queue\n").unwrap();
    git(&["add", "outside.txt"], &outside);
    git(&["commit", "--quiet", "-m", "Outside change"], &outside);
    let tests = setup.dir.path().join("test-runs.txt");
    let pushed = setup.dir.path().join("pushed");
    let test_command = format!(
        "echo run >> '{tests}'; if [ ! -f '{pushed}' ]; then touch '{pushed}'; git -C '{outside}' push --quiet origin HEAD:main; fi; grep -qx hello hello.txt",
        tests = tests.display(),
        pushed = pushed.display(),
        outside = outside.display()
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some(test_command)
        })
        .await;
    let item = setup.ingest("Greeting", STORY).await;
    setup.cycle().await;
    assert_eq!(setup.phase(item).await, "merged");
    assert_eq!(
        setup.steps(item).await,
        ["spec>build", "build>review", "review>merged"]
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    assert_eq!(std::fs::read_to_string(&tests).unwrap().lines().count(), 2);
    let remote = setup.remote_git();
    assert_eq!(
        remote.run(&["show", "main:outside.txt"]).await.unwrap(),
        "pushed past the queue"
    );
    assert_eq!(
        remote.run(&["show", "main:hello.txt"]).await.unwrap(),
        "hello"
    );
}

/// A project that rebases: a branch that fell behind is rebased onto main (no merge
/// commit in it), pushed with a lease, tested and merged, with no agent run.
#[tokio::test]
async fn a_rebasing_project_rebases_the_branch_that_fell_behind() {
    let setup = Setup::new().await;
    let runs = setup.dir.path().join("agent-runs.txt");
    let agent = setup.agent(
        "agent.sh",
        &format!(
            "cat > /dev/null\necho run >> '{}'\necho \"$DAMASCUS_ITEM_ID\" > \"change-$DAMASCUS_ITEM_ID.txt\"\n{CLAUDE_OK}",
            runs.display()
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some("ls change-*.txt".into());
            p.branch_update = damascus_core::BranchUpdate::Rebase;
            p.merge_batch_size = 1;
        })
        .await;
    let lock = hold_the_queue(&setup).await;
    let first = setup.ingest("First", STORY).await;
    let second = setup.ingest("Second", STORY).await;
    setup.cycle().await;
    release_the_queue(&setup, &lock).await;
    setup.cycle().await;
    assert_eq!(setup.phase_counts().await, ["cancelled=1", "merged=2"]);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
    let remote = setup.remote_git();
    for item in [first, second] {
        let branch = format!("damascus/web-{item}");
        let parents = remote
            .run(&["rev-list", "--parents", "-n1", &branch])
            .await
            .unwrap();
        assert_eq!(
            parents.split(' ').count(),
            2,
            "{branch}'s head is a plain commit, not a merge: {parents}"
        );
        assert!(remote
            .run(&["show", &format!("main:change-{item}.txt")])
            .await
            .is_ok());
    }
}

/// The agent fails to resolve a conflict at the head (it exits non-zero): the item goes
/// back to build with that failure and what the agent spent is recorded; the rebuild
/// takes main in first and resolves the conflict, and the item merges.
#[tokio::test]
async fn an_agent_that_fails_at_the_head_sends_the_item_back_to_build() {
    let setup = Setup::new().await;
    let agent = setup.agent(
        "agent.sh",
        &format!(
            r#"cat > /dev/null
if [ "$DAMASCUS_TASK" = resolve-conflicts ]; then
  echo '{{"type":"result","subtype":"error_max_turns","is_error":true,"total_cost_usd":0.1,"result":"gave up"}}'
  exit 1
fi
echo "from item $DAMASCUS_ITEM_ID" > shared.txt
{CLAUDE_OK}"#
        ),
    );
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some("test -f shared.txt".into());
        })
        .await;
    let lock = hold_the_queue(&setup).await;
    let first = setup.ingest("First", STORY).await;
    let second = setup.ingest("Second", STORY).await;
    setup.cycle().await;
    release_the_queue(&setup, &lock).await;
    setup.cycle().await;
    assert_eq!(setup.phase(first).await, "merged");
    assert_eq!(setup.phase(second).await, "merged");
    let (winner, loser) = if setup.steps(first).await.len() == 3 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(setup.steps(winner).await.len(), 3);
    assert_eq!(
        setup.steps(loser).await,
        [
            "spec>build",
            "build>review",
            "review>build",
            "build>review",
            "review>merged"
        ]
    );
    let reason: String = sqlx::query_scalar(
        "select payload->>'reason' from events_outbox
         where item_id = $1 and kind = 'item.phase_changed' and payload->>'from' = 'review'
         order by id limit 1",
    )
    .bind(loser)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!(reason.contains("the agent exited with 1"), "{reason}");
    let spent: f64 = sqlx::query_scalar(
        "select coalesce(sum(usd), 0)::float8 from cost_ledger where item_id = $1 and phase = 'review'",
    )
    .bind(loser)
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!((spent - 0.1).abs() < 1e-9, "{spent}");
    assert_eq!(
        setup
            .remote_git()
            .run(&["show", "main:shared.txt"])
            .await
            .unwrap(),
        format!("from item {loser}")
    );
}
