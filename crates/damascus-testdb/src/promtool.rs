//! `promtool check metrics` on an exposition, for the tests of `/metrics`.

/// `promtool check metrics` (Debian's prometheus package; .ci/run installs it) accepts
/// the exposition. Without promtool this fails unless DAMASCUS_SKIP_PROMTOOL=1.
pub fn check_metrics(metrics: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("DAMASCUS_SKIP_PROMTOOL").as_deref() == Ok("1"),
                "promtool is missing: apt-get install prometheus (or set DAMASCUS_SKIP_PROMTOOL=1 to skip this check)"
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
