//! What an operator must be able to trust: spend caps that hold while several items of
//! a project build at once, and an agent that cannot reach the orchestrator's secrets
//! or write outside its worktree.

use std::os::unix::fs::PermissionsExt;

use damascus_core::{Sandbox, SpecMode};
use damascus_loops::AgentUser;

use crate::support::{Setup, GREETING};

/// A Claude-like agent: it spends 0.01 USD per turn and needs 5 turns; it stops after
/// the turn that reaches `DAMASCUS_BUDGET_USD` with Claude Code's budget result and exit
/// 1. Each call appends "item cost" to `calls`.
fn turn_by_turn_agent(calls: &std::path::Path) -> String {
    format!(
        r#"cat > /dev/null
budget="${{DAMASCUS_BUDGET_USD:-1000}}"
spent=$(awk -v b="$budget" 'BEGIN {{ s = 0; while (s < 0.05 - 1e-9) {{ s += 0.01; if (s >= b - 1e-9) break }}; printf "%.4f", s }}')
echo "$DAMASCUS_ITEM_ID $spent" >> {calls}
sleep 1
if awk -v s="$spent" 'BEGIN {{ exit !(s < 0.05 - 1e-9) }}'; then
  echo "{{\"type\":\"result\",\"subtype\":\"error_max_budget_usd\",\"is_error\":true,\"total_cost_usd\":$spent}}"
  exit 1
fi
echo "change $DAMASCUS_ITEM_ID" > "change-$DAMASCUS_ITEM_ID.txt"
echo "{{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"total_cost_usd\":$spent}}""#,
        calls = calls.display()
    )
}

#[tokio::test]
async fn concurrent_builds_of_one_project_stay_within_its_daily_cap() {
    const DAILY_CAP: f64 = 0.10;
    const TURN: f64 = 0.01;
    const CONCURRENCY: u32 = 4;
    let setup = Setup::new().await;
    let calls = setup.dir.path().join("calls.txt");
    let agent = setup.agent("agent.sh", &turn_by_turn_agent(&calls));
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.test_command = Some("true".into());
            p.cost_budget_usd = Some(0.06);
            p.daily_cost_budget_usd = Some(DAILY_CAP);
            p.max_attempts_per_phase = 1;
        })
        .await;
    for n in 0..6 {
        setup
            .ingest(
                &format!("Change {n}"),
                "Write a change file.\n\n## Acceptance criteria\n- a change file exists\n",
            )
            .await;
    }
    setup.cycle_at(setup.loops_config(None), CONCURRENCY).await;

    let ledger: f64 = sqlx::query_scalar("select coalesce(sum(usd), 0)::float8 from cost_ledger")
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    // Each running call may pass its reservation by at most one turn.
    let bound = DAILY_CAP + CONCURRENCY as f64 * TURN;
    eprintln!("spent {ledger} USD under a {DAILY_CAP} USD daily cap (bound {bound})");
    assert!(
        ledger <= bound + 1e-9,
        "spent {ledger} USD under a {DAILY_CAP} USD daily cap (bound {bound})"
    );
    // Every call the agent made is in the ledger, with what it said it spent.
    let made: Vec<(i64, f64)> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(|line| {
            let (item, usd) = line.split_once(' ').unwrap();
            (item.parse().unwrap(), usd.parse().unwrap())
        })
        .collect();
    let said: f64 = made.iter().map(|(_, usd)| usd).sum();
    assert!(
        (said - ledger).abs() < 1e-9,
        "calls {made:?}, ledger {ledger}"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from cost_ledger where source = 'agent'")
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, made.len(), "{made:?}");
    // The cap was reached: the rest wait for a person to raise it.
    let capped: i64 = sqlx::query_scalar(
        "select count(*) from human_issues where question like '%whole daily budget%'",
    )
    .fetch_one(&setup.db.pool)
    .await
    .unwrap();
    assert!(
        capped >= 1,
        "no item stopped at the daily cap; calls {made:?}"
    );
}

/// The cluster's socket directory, as the server reports it.
async fn socket_dir(setup: &Setup) -> String {
    let dirs: String = sqlx::query_scalar("show unix_socket_directories")
        .fetch_one(&setup.db.pool)
        .await
        .unwrap();
    dirs.split(',').next().unwrap().trim().to_owned()
}

/// An agent that tries to reach what it must not, printing `LEAK: what` for each
/// attempt that works and `held: what` for each that fails, then does its job. Writes
/// outside the worktree are looked for on the host.
fn hostile_agent() -> &'static str {
    r#"cat > /dev/null
socket="$1"; data="$2"; worker="$3"; remote="$4"; outside="$5"
check() { if [ "$1" = 0 ]; then echo "LEAK: $2"; else echo "held: $2"; fi; }
env | grep -qE 'DATABASE_URL|GITEA_TOKEN|GITHUB_TOKEN|LLM_API_KEY|damascus-marker-secret'; check $? "secrets in its own environment"
found=1
for f in /proc/[0-9]*/environ; do
  if grep -qa damascus-marker-secret "$f" 2>/dev/null; then found=0; fi
done
check $found "a secret in another process's environment"
grep -qa damascus-marker-secret "/proc/$worker/environ" 2>/dev/null; check $? "the worker's /proc environ"
kill -0 "$worker" 2>/dev/null; check $? "signalling the worker"
psql -h "$socket" -U damascus -d postgres -Atc 'select 1' >/dev/null 2>&1; check $? "the cluster's socket"
ls "$socket"/.s.PGSQL.* >/dev/null 2>&1; check $? "seeing the cluster's socket"
ls "$data/repos" >/dev/null 2>&1 && [ -n "$(ls -A "$data/logs" 2>/dev/null)" ]; check $? "the data directory"
touch /etc/damascus-escaped 2>/dev/null; check $? "writing to /etc"
# Under a private /tmp these land in a scratch file system; the test looks on the host.
touch "$outside/escaped" "$remote/escaped" 2>/dev/null
echo "home=$HOME anthropic=${ANTHROPIC_API_KEY:-unset} uid=$(id -u)"
echo hello > hello.txt
echo '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0}'"#
}

async fn hostile_run(sandbox: Sandbox) -> (Setup, String) {
    hostile_run_as(sandbox, None).await
}

async fn hostile_run_as(sandbox: Sandbox, user: Option<AgentUser>) -> (Setup, String) {
    // SAFETY: tests of this binary read no variable named so; set before any thread
    // of this test reads the environment.
    unsafe { std::env::set_var("DAMASCUS_TEST_MARKER", "damascus-marker-secret") };
    let setup = Setup::new().await;
    let agent = setup.agent("hostile.sh", hostile_agent());
    let socket = socket_dir(&setup).await;
    let data = setup.dir.path().join("data");
    let outside = setup.dir.path().to_string_lossy().into_owned();
    let remote = setup.remote.to_string_lossy().into_owned();
    setup
        .project(&agent, SpecMode::Passthrough, |p| {
            p.agent = damascus_core::AgentKind::Command;
            p.agent_command = Some(vec![
                agent.clone(),
                socket,
                data.to_string_lossy().into_owned(),
                std::process::id().to_string(),
                remote,
                outside,
            ]);
            p.sandbox = sandbox;
            p.max_attempts_per_phase = 1;
        })
        .await;
    let item = setup.ingest("Greeting", GREETING).await;
    let mut config = setup.loops_config(None);
    if user.is_some() {
        // The agent user passes through the test's directory to its worktree.
        std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    config.agent_user = user;
    config.agent_env = vec![("ANTHROPIC_API_KEY".into(), "sk-for-the-agent".into())];
    setup.cycle_with(config).await;
    let log = std::fs::read_to_string(data.join(format!("logs/{item}/build-1.log")))
        .unwrap_or_else(|e| panic!("the agent's log: {e}"));
    assert_eq!(setup.phase(item).await, "merged", "{log}");
    (setup, log)
}

#[tokio::test]
async fn the_agent_gets_an_allow_listed_environment_and_a_home_of_its_own() {
    let (setup, log) = hostile_run(Sandbox::None).await;
    // Without a sandbox a root agent may write anywhere: clean up after it.
    let _ = std::fs::remove_file("/etc/damascus-escaped");
    assert!(
        log.contains("held: secrets in its own environment"),
        "{log}"
    );
    let home = setup.dir.path().join("data/homes/web-1");
    assert!(
        log.contains(&format!(
            "home={} anthropic=sk-for-the-agent",
            home.display()
        )),
        "{log}"
    );
}

#[tokio::test]
async fn an_agent_under_bubblewrap_reaches_no_secret_and_writes_only_its_worktree() {
    if damascus_loops_bwrap_missing() {
        return;
    }
    let (setup, log) = hostile_run(Sandbox::Bwrap).await;
    assert!(!log.contains("LEAK"), "{log}");
    assert_eq!(log.matches("held: ").count(), 8, "{log}");
    assert!(!setup.dir.path().join("escaped").exists());
    assert!(!setup.remote.join("escaped").exists());
}

/// Whether bubblewrap is missing here; CI installs it and sets DAMASCUS_REQUIRE_BWRAP,
/// so there a missing bwrap fails the test instead of skipping it.
fn damascus_loops_bwrap_missing() -> bool {
    let present = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("DAMASCUS_REQUIRE_BWRAP").is_none(),
            "bubblewrap is required here; apt-get install bubblewrap"
        );
        eprintln!("skipped: bubblewrap is not installed (apt-get install bubblewrap)");
    }
    !present
}

/// The unprivileged user the agent-user test runs its agent as, created when missing;
/// `None` where this process cannot switch users (not root), which CI's root run can.
fn test_agent_user() -> Option<AgentUser> {
    const NAME: &str = "damascus-agent-test";
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running the agent as another user needs root");
        return None;
    }
    if nix::unistd::User::from_name(NAME).unwrap().is_none() {
        let made = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", NAME])
            .status()
            .expect("useradd runs");
        // Two tests may race to create it.
        assert!(
            made.success() || nix::unistd::User::from_name(NAME).unwrap().is_some(),
            "cannot create the test's agent user"
        );
    }
    Some(AgentUser::lookup(NAME).unwrap())
}

#[tokio::test]
async fn an_agent_run_as_another_user_reaches_no_secret_and_writes_only_its_worktree() {
    let Some(user) = test_agent_user() else {
        return;
    };
    let uid = user.uid;
    let (setup, log) = hostile_run_as(Sandbox::None, Some(user)).await;
    assert!(log.contains(&format!(" uid={uid}\n")), "{log}");
    assert!(!log.contains("LEAK"), "{log}");
    assert_eq!(log.matches("held: ").count(), 8, "{log}");
    assert!(!setup.dir.path().join("escaped").exists());
    assert!(!setup.remote.join("escaped").exists());
    // The worktree is the worker's again after the run.
    let worktree = setup.dir.path().join("data/worktrees/web/web-1");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&worktree).unwrap());
    assert_eq!(owner, nix::unistd::geteuid().as_raw());
}

#[tokio::test]
async fn an_agent_as_another_user_under_bubblewrap_reaches_no_secret() {
    if damascus_loops_bwrap_missing() {
        return;
    }
    let Some(user) = test_agent_user() else {
        return;
    };
    let uid = user.uid;
    let (setup, log) = hostile_run_as(Sandbox::Bwrap, Some(user)).await;
    assert!(log.contains(&format!(" uid={uid}\n")), "{log}");
    assert!(!log.contains("LEAK"), "{log}");
    assert_eq!(log.matches("held: ").count(), 8, "{log}");
    assert!(!setup.dir.path().join("escaped").exists());
}
