//! The agent's own session continued, through the `claude` agent's contract with a
//! stand-in `claude` on PATH (a script that keeps a session file in its HOME, names
//! its session in its result, and logs each run's task, directory and argv): after a
//! person's answer, and at the head of the merge queue when the branch conflicts. The
//! real CLIs' follow-ups are in their own files (`claude_code.rs`, `codex.rs`, …).

use damascus_core::{AgentKind, SpecMode};

use crate::support::{path_with, session_events, Setup, GREETING};

/// The stand-in: `FAKE_CLAUDE_LOG` gets one line per run (task, directory, argv) and
/// the prompt; what it writes depends on the prompt (guidance → hello.txt; conflicts →
/// conflict.txt resolved) and on `FAKE_CLAUDE_MODE` (`nothing`, or `conflict`: each
/// item writes conflict.txt with its own line).
const FAKE_CLAUDE: &str = r###"#!/bin/sh
prompt="$(cat)"
session=""
prev=""
for arg in "$@"; do
    [ "$prev" = "--resume" ] && session="$arg"
    prev="$arg"
done
[ -n "$session" ] || session="session-$DAMASCUS_ITEM_ID-$$"
mkdir -p "$HOME/.claude/projects/here"
touch "$HOME/.claude/projects/here/$session.jsonl"
{
    echo "RUN task=$DAMASCUS_TASK item=$DAMASCUS_ITEM_ID dir=$(pwd) args=$*"
    printf '%s\n' "$prompt" | sed 's/^/  | /'
} >> "$FAKE_CLAUDE_LOG"
case "$prompt" in
    *"## Conflicts with main"*) echo "both, resolved" > conflict.txt ;;
    *"Guidance from the people responsible"*) echo hello > hello.txt ;;
    *)
        case "$FAKE_CLAUDE_MODE" in
            conflict) echo "item $DAMASCUS_ITEM_ID" > conflict.txt ;;
            *) ;;
        esac
        ;;
esac
echo "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"$session\"}"
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"num_turns\":1,\"total_cost_usd\":0.01,\"permission_denials\":[],\"session_id\":\"$session\",\"result\":\"done\"}"
"###;

/// A project run by the stand-in `claude`, with the loops' config that finds it.
async fn fake_claude_project(
    setup: &Setup,
    mode: &str,
    edit: impl FnOnce(&mut damascus_core::NewProject),
) -> (damascus_loops::LoopsConfig, std::path::PathBuf) {
    let bin = setup.agent("claude-stand-in", FAKE_CLAUDE);
    let log = setup.dir.path().join("claude-runs.log");
    setup
        .project("unused", SpecMode::Passthrough, |p| {
            p.agent = AgentKind::Claude;
            p.agent_command = None;
            edit(p);
        })
        .await;
    let mut config = setup.loops_config(None);
    config.agent_env = vec![
        (
            "PATH".into(),
            path_with(setup, "claude", std::path::Path::new(&bin)),
        ),
        ("FAKE_CLAUDE_LOG".into(), log.to_string_lossy().into_owned()),
        ("FAKE_CLAUDE_MODE".into(), mode.into()),
    ];
    (config, log)
}

/// Each run's header line: `RUN task=… dir=… args=…`.
fn runs(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("RUN "))
        .map(str::to_owned)
        .collect()
}

/// A build that wrote nothing asks a person; the answer continues the agent's session
/// (`--resume`), and the prompt is only what is new: the question and the answer.
#[tokio::test]
async fn a_persons_answer_continues_the_agents_session_with_only_what_is_new() {
    let setup = Setup::new().await;
    let (config, log) = fake_claude_project(&setup, "nothing", |p| {
        p.max_attempts_per_phase = 1;
    })
    .await;
    let item = setup.ingest("Greeting", GREETING).await;
    setup.cycle_with(config.clone()).await;
    assert_eq!(setup.phase(item).await, "blocked");
    let (issue, question) = setup.open_question(item).await;
    assert!(question.contains("wrote nothing"), "{question}");

    damascus_db::human::answer(&setup.db.pool, issue, "Write hello into hello.txt.", "ana")
        .await
        .unwrap();
    setup.cycle_with(config).await;
    assert_eq!(
        setup.phase(item).await,
        "merged",
        "{:?}",
        setup.steps(item).await
    );

    let runs = runs(&log);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let sessions = session_events(&setup, item).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(!sessions[0].0 && sessions[1].0, "{sessions:?}");
    assert_eq!(sessions[0].1, sessions[1].1);
    assert!(
        runs[1].contains(&format!("--resume {}", sessions[0].1)),
        "{runs:#?}"
    );
    // The continued run's prompt: what is new, ending with the answer; not the spec.
    let text = std::fs::read_to_string(&log).unwrap();
    let second = text.rsplit("RUN ").next().unwrap();
    assert!(
        second.contains("You worked on this change before"),
        "{second}"
    );
    assert!(!second.contains("## Acceptance criteria"), "{second}");
    assert!(
        second.trim_end().ends_with("Write hello into hello.txt."),
        "{second}"
    );
}

/// Two items change the same file: the one at the head of the merge queue after the
/// other merged conflicts with main. Its session is continued in the build's
/// worktree (where it lives) to resolve the conflict, with only the files in conflict.
#[tokio::test]
async fn a_conflict_at_the_head_continues_the_agents_session_in_the_builds_worktree() {
    let setup = Setup::new().await;
    let (config, log) = fake_claude_project(&setup, "conflict", |p| {
        p.test_command = Some("test -f conflict.txt && ! grep -q '<<<<<<<' conflict.txt".into());
    })
    .await;
    let story = "Write conflict.txt.\n\n## Acceptance criteria\n- conflict.txt exists\n";
    let first = setup.ingest("One", story).await;
    let second = setup.ingest("Two", story).await;
    for _ in 0..4 {
        setup.cycle_with(config.clone()).await;
        if setup.phase(second).await == "merged" {
            break;
        }
    }
    assert_eq!(setup.phase(first).await, "merged");
    assert_eq!(
        setup.phase(second).await,
        "merged",
        "{:?}\n{:#?}",
        setup.steps(second).await,
        runs(&log)
    );
    let runs = runs(&log);
    let resolve: Vec<&String> = runs
        .iter()
        .filter(|r| r.contains("task=resolve-conflicts"))
        .collect();
    assert_eq!(resolve.len(), 1, "{runs:#?}");
    // Whichever merged second resolved the conflict.
    let loser = [first, second]
        .into_iter()
        .find(|id| resolve[0].contains(&format!(" item={id} ")))
        .expect("the run names its item");
    let build_dir = setup
        .dir
        .path()
        .join(format!("data/worktrees/web/web-{loser}"));
    assert!(
        resolve[0].contains(&format!("dir={} ", build_dir.display())),
        "resolved in the build's worktree: {resolve:?}"
    );
    let sessions = session_events(&setup, loser).await;
    assert!(
        resolve[0].contains(&format!("--resume {}", sessions[0].1)),
        "{resolve:?} {sessions:?}"
    );
    assert_eq!(sessions.last().map(|s| s.0), Some(true), "{sessions:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let resolve_prompt = text
        .split("RUN ")
        .find(|r| r.starts_with("task=resolve-conflicts"))
        .unwrap();
    assert!(
        resolve_prompt.contains("You worked on this change before")
            && resolve_prompt.contains("conflict.txt")
            && !resolve_prompt.contains("## Acceptance criteria"),
        "{resolve_prompt}"
    );
    let main = setup
        .remote_git()
        .run(&["show", "main:conflict.txt"])
        .await
        .unwrap();
    assert_eq!(main.trim_end(), "both, resolved");
}
