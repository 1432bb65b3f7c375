//! The worker commands as a user runs them: demo, cycle, worker with status and a
//! graceful stop, and answering questions.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use damascus_testdb::TestDatabase;

use crate::{damascus, ok, refused, run};

fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn demo_merges_one_story_and_blocks_the_other() {
    let db = TestDatabase::new().await;
    let dir = data_dir();
    let out = ok(damascus()
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", dir.path().to_str().unwrap(), "demo"])
        .output()
        .unwrap());
    assert!(out.contains("item 1: review -> merged [pass]"), "{out}");
    assert!(out.contains("Merge damascus/demo-1: Say hello"), "{out}");
    assert!(out.contains("item 2 (Say goodbye): blocked"), "{out}");
    assert!(out.contains("answer it with: damascus answer 1"), "{out}");
    let phases: Vec<String> = sqlx::query_scalar("select phase::text from work_items order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(phases, ["merged", "blocked"]);

    // Answering rebuilds the blocked item with the guidance; the scripted agent follows
    // it, and a cycle merges the item.
    let answered = ok(run(
        &db,
        &[
            "answer",
            "1",
            "Write farewell.txt with the single line goodbye.",
        ],
        "",
    ));
    assert!(answered.contains("the item resumes in build"), "{answered}");
    let cycled = ok(damascus()
        .env("DATABASE_URL", &db.url)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "cycle",
            "--concurrency",
            "2",
        ])
        .output()
        .unwrap());
    assert!(cycled.contains("review -> merged: 1"), "{cycled}");
    assert!(!cycled.contains("blocked"), "{cycled}");

    // The agent's and the tests' output, per item.
    let data = dir.path().to_str().unwrap();
    let logs = ok(damascus()
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", data, "logs", "2"])
        .output()
        .unwrap());
    assert!(
        logs.contains("==> build-1.log <==") && logs.contains("wrote hello.txt"),
        "{logs}"
    );
    // The scripted agent ends with Claude Code's result line: its transcript reads it,
    // and the raw JSON line is not printed twice.
    assert!(
        logs.contains("==> build-1.transcript.jsonl <==") && logs.contains("── done (success"),
        "{logs}"
    );
    assert!(!logs.contains("\"type\":\"result\""), "{logs}");
    assert!(
        logs.contains("review-") && logs.contains("No such file or directory"),
        "{logs}"
    );
    // Operator controls, on an item blocked by hand in review.
    refused(
        run(&db, &["item", "retry", "2"], ""),
        1,
        &["merged, not blocked", "only blocked items"],
    );
    let blocked: i64 = sqlx::query_scalar(
        "insert into work_items (project_id, title, phase, resume_phase, max_attempts_per_phase, max_attempts_total)
         select id, 'Blocked by hand', 'blocked', 'review', 3, 10 from projects where name = 'demo'
         returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let id = blocked.to_string();
    assert!(ok(run(&db, &["item", "retry", &id], ""))
        .contains("back in review with a fresh attempt budget"));
    refused(
        run(&db, &["item", "retry", &id], ""),
        1,
        &["not blocked", "only blocked items"],
    );
    assert!(ok(run(&db, &["item", "cancel", &id], ""))
        .contains(&format!("item {id} cancelled (it was in review)")));
    refused(
        run(&db, &["item", "cancel", &id], ""),
        1,
        &["already cancelled"],
    );
    refused(
        run(&db, &["item", "cancel", "99"], ""),
        1,
        &["work item 99 not found"],
    );
    refused(
        run(&db, &["logs", "99"], ""),
        1,
        &["work item 99 not found"],
    );
    assert!(ok(run(&db, &["project", "pause", "demo"], "")).contains("project demo paused"));
    assert!(ok(run(&db, &["project", "list"], "")).contains("paused"));
    assert!(ok(run(&db, &["project", "resume", "demo"], "")).contains("project demo resumed"));
    refused(
        run(&db, &["project", "pause", "ghost"], ""),
        1,
        &["project \"ghost\" not found"],
    );
}

#[tokio::test]
async fn answer_refusals() {
    let db = TestDatabase::new().await;
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["answer", "99", "yes"], 1, &["human issue 99 not found"]),
        (&["answer", "0", "yes"], 2, &["0 is not in 1.."]),
        (&["answer", "1"], 2, &["<TEXT>"]),
    ];
    for (args, code, needles) in cases {
        refused(run(&db, args, ""), *code, needles);
    }
    sqlx::query("insert into projects (name, repository) values ('web', '/x')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into work_items (project_id, title, phase, resume_phase, max_attempts_per_phase, max_attempts_total)
         select id, 't', 'blocked', 'spec', 3, 10 from projects",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("insert into human_issues (item_id, phase, question) select id, 'spec', 'Which?' from work_items")
        .execute(&db.pool)
        .await
        .unwrap();
    refused(
        run(&db, &["answer", "1", "  "], ""),
        1,
        &["the answer is empty"],
    );
    ok(run(&db, &["answer", "1", "this one"], ""));
    refused(
        run(&db, &["answer", "1", "again"], ""),
        1,
        &["already answered", "only open questions"],
    );
}

#[tokio::test]
async fn a_worker_shows_in_status_and_stops_on_sigterm() {
    let db = TestDatabase::new().await;
    let dir = data_dir();
    let mut worker = std::process::Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_remove("DAMASCUS_DATA_DIR")
        .env("DATABASE_URL", &db.url)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "worker",
            "--concurrency",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        let out = ok(run(&db, &["status"], ""));
        if out.contains("workers (1 live)") && out.contains("global cap 3") {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never registered:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.contains(&format!("{}", worker.id())), "{status}");
    assert!(status.contains("global cap 3"), "{status}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "{exit}");
    let after = ok(run(&db, &["status"], ""));
    assert!(after.contains("workers (0 live)"), "{after}");
}

#[test]
fn worker_setting_refusals() {
    // (arguments, environment, exit code, what stderr says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["worker", "--concurrency", "0"],
            &[],
            2,
            &["0 is not in 1..=1024"],
        ),
        (
            &["cycle", "--lease-secs", "1"],
            &[],
            2,
            &["1 is not in 3..=3600"],
        ),
        (
            &["cycle"],
            &[("DAMASCUS_LLM_BASE_URL", "http://x/v1")],
            1,
            &["DAMASCUS_LLM_MODEL", "is not"],
        ),
        (
            &["cycle"],
            &[("DAMASCUS_LLM_MODEL", "m")],
            1,
            &["DAMASCUS_LLM_BASE_URL", "give the endpoint"],
        ),
        (
            &["cycle", "--llm-base-url", "ftp://x", "--llm-model", "m"],
            &[],
            1,
            &["must start with http"],
        ),
        (
            &["cycle", "--llm-price", "gpt=cheap"],
            &[],
            1,
            &["MODEL=INPUT/OUTPUT"],
        ),
        (
            &["cycle", "--agent-price", "gpt-5=1.25/10"],
            &[],
            1,
            &["--agent-price", "MODEL=INPUT/CACHED/OUTPUT"],
        ),
        (
            &["cycle"],
            &[("DAMASCUS_AGENT_PRICES", "gpt-5=-1/0/0")],
            1,
            &["--agent-price", "\"gpt-5=-1/0/0\""],
        ),
        (
            &["cycle", "--git-author", "nobody"],
            &[],
            1,
            &["DAMASCUS_GIT_AUTHOR", "Name <email>"],
        ),
        (
            &["worker", "--agent-user", "no-such-user-here"],
            &[],
            1,
            &["no user \"no-such-user-here\"", "useradd"],
        ),
        (
            &["cycle"],
            &[("DAMASCUS_AGENT_USER", "root")],
            1,
            &["is root", "unprivileged user"],
        ),
        (
            &["cycle", "--agent-env", "DAMASCUS_GITEA_TOKEN"],
            &[],
            1,
            &["never reach the agent"],
        ),
        (
            &["cycle"],
            &[("DAMASCUS_AGENT_ENV", "CLAUDE_CODE_X,DATABASE_URL")],
            1,
            &["--agent-env DATABASE_URL", "never reach the agent"],
        ),
        (
            &["cycle", "--agent-env", "MY VAR"],
            &[],
            1,
            &["is not a variable name"],
        ),
    ];
    for (args, env, code, needles) in cases {
        let mut cmd = damascus();
        cmd.env("DATABASE_URL", "postgresql://u@127.0.0.1:1/x")
            .args(*args);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        refused(cmd.output().unwrap(), *code, needles);
    }
}

/// The bench runs end to end on small numbers (its figures are only meaningful from a
/// release build; here it must work and report every figure).
#[tokio::test]
async fn bench_queue_reports_every_figure() {
    let db = TestDatabase::new().await;
    let args = [
        "bench",
        "queue",
        "--jobs",
        "40,80",
        "--concurrency",
        "2",
        "--latency-samples",
        "5",
        "--commit-seconds",
        "1",
        "--rounds",
        "2",
    ];
    let out = ok(run(&db, &args, ""));
    for needle in [
        "2 round(s)",
        "round 1",
        "round 2",
        "%); bare queue ",
        "commit rate",
        "(median of the rounds)",
        "the higher of this client's best and pgbench's",
        "  this client     ",
        "(connections: 2: ",
        "  pgbench         ",
        "backlog      40",
        "backlog      80",
        "% of the commit rate (the round with the median ratio; all rounds",
        "one claim",
        "bare queue ",
        "80 rows drained with one DELETE",
        "pickup latency    p50",
    ] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
    if damascus_bench::baseline::find_pgbench().is_some() {
        // pgbench ran at every client count, and the baseline is the higher best.
        assert!(out.contains("(clients: 2: "), "{out}");
    } else {
        assert!(out.contains("pgbench         not installed"), "{out}");
    }
    if std::path::Path::new("/proc/stat").exists() {
        // What a job and a commit cost the machine, and the ceiling that gives.
        assert_eq!(out.matches("us per job (the machine").count(), 2, "{out}");
        assert!(out.contains("us per commit (the machine"), "{out}");
        assert!(out.contains("every core busy would run at most"), "{out}");
        assert!(out.contains("the worker pool in this process"), "{out}");
        assert!(out.contains("the client in this process"), "{out}");
    }
    let leftovers: i64 = sqlx::query_scalar(
        "select count(*) from pg_database where datname like 'damascus_bench_%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "scratch databases are dropped");
    refused(
        run(&db, &["bench", "queue", "--jobs", "0"], ""),
        2,
        &["0 is not in 1..=1000000"],
    );
    refused(
        run(&db, &["bench", "queue", "--rounds", "0"], ""),
        2,
        &["--rounds", "0 is not in 1..=100"],
    );
}

/// A `damascus worker` on `db` with a short lease, one phase at a time.
fn spawn_worker(db: &TestDatabase, data: &std::path::Path) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_remove("DAMASCUS_DATA_DIR")
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", data.to_str().unwrap(), "worker"])
        .args([
            "--concurrency",
            "1",
            "--lease-secs",
            "3",
            "--poll-secs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn a_worker_killed_mid_build_leaves_no_agent_running_and_its_job_runs_again_once() {
    let db = TestDatabase::new().await;
    let data = data_dir();
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("remote.git");
    damascus_git::init_bare_with_files(
        &remote,
        &[("README.md", "demo\n")],
        &damascus_git::Identity::default(),
    )
    .await
    .unwrap();
    let runs = work.path().join("runs.txt");
    let sleeper = work.path().join("sleeper.pid");
    let agent = work.path().join("agent.sh");
    // The first run starts a background sleep and then loops until it is killed; the
    // second does the job.
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho run >> {runs}\nif [ ! -e {sleeper} ]; then\n  sleep 300 &\n  echo $! > {sleeper}\n  while true; do sleep 1; done\nfi\necho hello > hello.txt\necho '{{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"total_cost_usd\":0}}'\n",
            runs = runs.display(),
            sleeper = sleeper.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(run(
        &db,
        &[
            "project",
            "add",
            "web",
            "--repo",
            remote.to_str().unwrap(),
            "--spec-mode",
            "passthrough",
            "--agent-command",
            agent.to_str().unwrap(),
            "--test-command",
            "grep -qx hello hello.txt",
        ],
        "",
    ));
    ok(run(
        &db,
        &["ingest", "-p", "web", "--title", "Greeting"],
        "Greet the reader.\n\n## Acceptance criteria\n- hello.txt holds the word hello\n",
    ));

    let mut first = spawn_worker(&db, data.path());
    let started = Instant::now();
    while !sleeper.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the agent never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sleep_pid: i32 = std::fs::read_to_string(&sleeper)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !is_gone(sleep_pid),
        "the agent's child died with the worker"
    );

    let killed_at = Instant::now();
    let mut second = spawn_worker(&db, data.path());
    let phase = loop {
        let phase: String = sqlx::query_scalar("select phase::text from work_items where id = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if phase == "merged" || phase == "blocked" {
            break phase;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "the job did not run again: {phase}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(phase, "merged");
    assert!(is_gone(sleep_pid), "the dead worker's agent still runs");
    let orphaned_for = killed_at.elapsed();
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        2,
        "the agent ran once before the kill and once after"
    );
    eprintln!("merged {orphaned_for:?} after the kill");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    second.wait().unwrap();
}
