//! `damascus agents`: which agents this build runs, found on PATH with their versions,
//! without a database.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::{damascus, ok};

/// A PATH holding only a fake `codex` and a fake `claude` that print versions.
fn fake_path(dir: &std::path::Path) -> String {
    for (program, version) in [
        ("codex", "codex-cli 0.169.0"),
        ("claude", "2.1.197 (Claude Code)"),
    ] {
        let path = dir.join(program);
        std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.to_string_lossy().into_owned()
}

#[test]
fn agents_lists_each_with_whether_it_is_installed_and_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_path(dir.path());
    let out = ok(damascus()
        .env("PATH", &path)
        .env("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/unused")
        .args(["agents", "--json"])
        .output()
        .unwrap());
    let agents: Vec<Value> = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = agents
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["claude", "codex", "gemini", "opencode", "command"]);
    let by = |kind: &str| agents.iter().find(|a| a["agent"] == kind).unwrap().clone();
    assert_eq!(by("codex")["installed"], true);
    assert_eq!(by("codex")["version"], "codex-cli 0.169.0");
    assert_eq!(by("codex")["spend"], "price table");
    assert_eq!(by("codex")["budget_capped_by"], "damascus");
    assert_eq!(by("claude")["budget_capped_by"], "agent");
    assert_eq!(by("claude")["spend"], "reported");
    assert_eq!(by("gemini")["installed"], false);
    assert_eq!(by("gemini")["version"], Value::Null);
    assert!(by("gemini")["install"]
        .as_str()
        .unwrap()
        .contains("@google/gemini-cli"));
    assert!(by("gemini")["env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("GEMINI_API_KEY")));

    let table = ok(damascus()
        .env("PATH", &path)
        .arg("agents")
        .output()
        .unwrap());
    assert!(table.contains("codex-cli 0.169.0"), "{table}");
    assert!(
        table.contains("not installed: npm install -g opencode-ai"),
        "{table}"
    );
}
