//! `/metrics` of a running `damascus run`: scraped before and after a story goes
//! through, its counters rise by what happened, and promtool accepts it.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use damascus_testdb::TestDatabase;

use crate::{ok, run};

/// The value of the sample `series` (name and labels exactly as exposed), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await {
            assert!(r.status().is_success(), "{}", r.status());
            return r.text().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn counters_rise_by_what_a_story_did() {
    let db = TestDatabase::new().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("remote.git");
    damascus_git::init_bare_with_files(
        &remote,
        &[("README.md", "demo\n")],
        &damascus_git::Identity::default(),
    )
    .await
    .unwrap();
    let agent = work.path().join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\ncat > /dev/null\necho hello > hello.txt\necho '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"total_cost_usd\":0.25}'\n",
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(assert_cmd::cargo::cargo_bin("damascus"))
        .env_remove("DAMASCUS_DATA_DIR")
        .env_remove("DAMASCUS_WEBHOOKS")
        .env("DATABASE_URL", &db.url)
        .args(["--data-dir", data.path().to_str().unwrap(), "run"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--public-metrics"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = scrape(&http, &url).await;

    ok(run(
        &db,
        &["ingest", "-p", "web", "--title", "Greeting"],
        "Greet the reader.\n\n## Acceptance criteria\n- hello.txt holds the word hello\n",
    ));
    let started = Instant::now();
    loop {
        let phase: String = sqlx::query_scalar("select phase::text from work_items where id = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if phase == "merged" {
            break;
        }
        assert_ne!(phase, "blocked");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still {phase}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = scrape(&http, &url).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    server.wait().unwrap();

    let rose = |series: &str| sample(&after, series) - sample(&before, series);
    for (from, to) in [("spec", "build"), ("build", "review"), ("review", "merged")] {
        let series =
            format!("damascus_transitions_total{{from=\"{from}\",to=\"{to}\",verdict=\"pass\"}}");
        assert_eq!(rose(&series), 1.0, "{series}\n{after}");
    }
    assert_eq!(rose("damascus_jobs_claimed_total"), 3.0, "{after}");
    assert_eq!(
        rose("damascus_pickup_latency_seconds_count"),
        3.0,
        "{after}"
    );
    assert_eq!(
        rose("damascus_phase_duration_seconds_count{phase=\"build\"}"),
        1.0,
        "{after}"
    );
    let spent = rose("damascus_spend_usd_total{kind=\"agent\",project=\"web\"}");
    assert!((spent - 0.25).abs() < 1e-9, "spent {spent}\n{after}");
    assert_eq!(sample(&after, "damascus_items{phase=\"merged\"}"), 1.0);
    assert!(
        !after.contains("item_id=") && !after.contains("item="),
        "no item ids in labels"
    );
    damascus_testdb::promtool::check_metrics(&after);
}
