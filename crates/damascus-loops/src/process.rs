//! Running a phase's process (the coding agent, the test command): argv only, a clean
//! environment, standard input from a string, a time limit, output kept whole in a log
//! file and its tail in memory. The process runs in a process group of its own, and the
//! whole group is killed when it ends, times out, or its phase is cancelled (even when
//! the phase's future is dropped mid-run), so nothing it started outlives it. The group's
//! leader gets SIGKILL when the worker dies, and the group is recorded with the job's
//! claim (`damascus_db::processes`), so a worker starting on this host kills what a
//! killed worker left behind.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How much of the output a verdict carries.
pub const TAIL_BYTES: usize = 4000;

pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub timeout: Duration,
    pub log_file: PathBuf,
    /// The job the process runs for: its group is recorded under the job's claim, and
    /// its environment names the claim (`DAMASCUS_CLAIM`).
    pub job: Option<damascus_queue::JobContext>,
    /// The user and group to run as, when not the worker's (`--agent-user`).
    pub user: Option<(u32, u32)>,
    /// Gets each line of stdout as it arrives (the agent's transcript follows it live).
    pub stdout_lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Asks the process to stop (an agent whose streamed usage reached its
    /// reservation): its group gets SIGTERM, and SIGKILL after `STOP_GRACE`.
    pub stop: Option<CancellationToken>,
}

/// How long a process asked to stop has to end after SIGTERM before its group is
/// killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEnd {
    Exited {
        code: Option<i32>,
        stdout: String,
        tail: String,
    },
    TimedOut {
        tail: String,
    },
    Cancelled,
    /// Stopped on request (`ProcessSpec::stop`); what it printed until then.
    Stopped {
        stdout: String,
        tail: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot run {program}: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

/// Output kept per stream; the rest is counted, not stored.
const KEEP_BYTES: usize = 8 * 1024 * 1024;

/// Kills the process group when dropped: when the phase is cancelled, its future is
/// dropped mid-run, and `kill_on_drop` alone would reach only the direct child.
struct GroupGuard(Option<nix::unistd::Pid>);

impl GroupGuard {
    fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, signal);
        }
    }
}

/// Why a process ended, before its output is read.
enum Ending {
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
    Stopped,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The log file both streams append to as output arrives, so `damascus logs --follow`
/// shows a phase live.
type SharedLog = std::sync::Arc<tokio::sync::Mutex<Option<tokio::fs::File>>>;

async fn read_bounded(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    log: SharedLog,
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut dropped = 0usize;
    let mut line = Vec::new();
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(file) = log.lock().await.as_mut() {
                    let _ = file.write_all(&chunk[..n]).await;
                    let _ = file.flush().await;
                }
                if let Some(lines) = &lines {
                    for &byte in &chunk[..n] {
                        if byte == b'\n' {
                            let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
                            line.clear();
                        } else {
                            line.push(byte);
                        }
                    }
                }
                if kept.len() + n <= KEEP_BYTES {
                    kept.extend_from_slice(&chunk[..n]);
                } else {
                    dropped += n;
                }
            }
        }
    }
    if let (Some(lines), false) = (&lines, line.is_empty()) {
        let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
    }
    if dropped > 0 {
        kept.extend_from_slice(
            format!("\n[damascus: {dropped} more bytes not kept in memory; see the log file]\n")
                .as_bytes(),
        );
    }
    kept
}

pub async fn run(spec: ProcessSpec, cancel: &CancellationToken) -> Result<ProcessEnd, SpawnError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let spawn_error = |source| SpawnError {
        program: program.clone(),
        source,
    };
    if let Some(parent) = spec.log_file.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(spawn_error)?;
    }
    let mut command = Command::new(&program);
    command
        .args(&spec.argv[1..])
        .current_dir(&spec.dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(
            spec.job
                .as_ref()
                .map(|job| ("DAMASCUS_CLAIM", job.claim.to_string())),
        )
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = spec.user {
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let group = GroupGuard(child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32)));
    let recorded = record_group(spec.job.as_ref(), child.id()).await;
    if let (Some(text), Some(mut pipe)) = (spec.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let log_file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .await
        .ok();
    let log: SharedLog = std::sync::Arc::new(tokio::sync::Mutex::new(log_file));
    let stdout = tokio::spawn(read_bounded(
        child.stdout.take().expect("stdout is piped"),
        log.clone(),
        spec.stdout_lines,
    ));
    let stderr = tokio::spawn(read_bounded(
        child.stderr.take().expect("stderr is piped"),
        log.clone(),
        None,
    ));
    // Wait for the process itself, not for its pipes: a background process it left
    // behind may hold them open.
    let stop = spec.stop.clone().unwrap_or_default();
    let ended = tokio::select! {
        status = child.wait() => Ending::Exited(status.ok().and_then(|s| s.code())),
        _ = tokio::time::sleep(spec.timeout) => Ending::TimedOut,
        _ = cancel.cancelled() => Ending::Cancelled,
        _ = stop.cancelled(), if spec.stop.is_some() => {
            // Asked to stop: SIGTERM lets the agent write its last lines (its usage).
            group.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
            Ending::Stopped
        }
    };
    // Whatever it started dies with it.
    group.kill();
    let _ = child.wait().await;
    if let (Some(job), Some(process_group)) = (spec.job.as_ref(), recorded) {
        let host = damascus_queue::orphans::host_name();
        if let Err(e) = damascus_db::processes::forget(&job.pool, host, process_group).await {
            tracing::warn!(error = %e, process_group, "cannot forget an ended process group; the next sweep does");
        }
    }
    let drain = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        let abort = task.abort_handle();
        match tokio::time::timeout(std::time::Duration::from_secs(2), task).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                abort.abort();
                Vec::new()
            }
        }
    };
    let (out, err) = tokio::join!(drain(stdout), drain(stderr));
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if !err.is_empty() {
        text.push_str("\n--- stderr ---\n");
        text.push_str(&String::from_utf8_lossy(&err));
    }
    let note = match &ended {
        Ending::Exited(code) => format!(
            "\n[damascus: exited with {}]\n",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into())
        ),
        Ending::Cancelled => "\n[damascus: cancelled]\n".to_owned(),
        Ending::TimedOut => format!("\n[damascus: killed after {:?}]\n", spec.timeout),
        Ending::Stopped => {
            "\n[damascus: stopped: its usage reached what was reserved for it]\n".to_owned()
        }
    };
    if let Some(file) = log.lock().await.as_mut() {
        let _ = file.write_all(note.as_bytes()).await;
        let _ = file.flush().await;
    }
    match ended {
        Ending::Exited(code) => Ok(ProcessEnd::Exited {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            tail: tail(&text),
        }),
        Ending::Cancelled => Ok(ProcessEnd::Cancelled),
        Ending::TimedOut => {
            text.push_str(note.trim_end());
            Ok(ProcessEnd::TimedOut { tail: tail(&text) })
        }
        Ending::Stopped => {
            text.push_str(note.trim_end());
            Ok(ProcessEnd::Stopped {
                stdout: String::from_utf8_lossy(&out).into_owned(),
                tail: tail(&text),
            })
        }
    }
}

/// Records the process group led by `pid` under the job's claim; returns the group
/// when it was recorded.
async fn record_group(job: Option<&damascus_queue::JobContext>, pid: Option<u32>) -> Option<i32> {
    let (job, pid) = (job?, pid? as i32);
    let process = damascus_db::processes::JobProcess {
        process_group: pid,
        claim: job.claim,
        item_id: job.item_id,
        leader_start_ticks: damascus_queue::orphans::start_ticks(pid).unwrap_or(0),
    };
    let host = damascus_queue::orphans::host_name();
    match damascus_db::processes::record(&job.pool, host, &process).await {
        Ok(()) => Some(pid),
        Err(e) => {
            tracing::warn!(error = %e, process_group = pid, "cannot record a process group; a worker crash would leave it running");
            None
        }
    }
}

/// The last `TAIL_BYTES` of `text`, cut at a character boundary.
pub fn tail(text: &str) -> String {
    let text = text.trim_end();
    if text.len() <= TAIL_BYTES {
        return text.to_owned();
    }
    let mut start = text.len() - TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts the process whose pid is in `pidfile` is gone (or a zombie).
    async fn assert_gone(pidfile: &std::path::Path, what: &str) {
        let pid: i32 = std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "{what}: {state}"
        );
    }

    fn spec(dir: &std::path::Path, script: &str, timeout: Duration) -> ProcessSpec {
        ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            dir: dir.to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Some("from stdin".into()),
            timeout,
            log_file: dir.join("logs/run.log"),
            job: None,
            user: None,
            stdout_lines: None,
            stop: None,
        }
    }

    #[tokio::test]
    async fn output_exit_code_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let end = run(
            spec(
                dir.path(),
                "cat; echo oops >&2; exit 3",
                Duration::from_secs(10),
            ),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let ProcessEnd::Exited { code, stdout, tail } = end else {
            panic!("{end:?}")
        };
        assert_eq!(code, Some(3));
        assert_eq!(stdout, "from stdin");
        assert!(tail.contains("oops"));
        assert!(std::fs::read_to_string(dir.path().join("logs/run.log"))
            .unwrap()
            .contains("from stdin"));
    }

    /// A stop asks with SIGTERM first (the process may print its last words), then
    /// kills the group: a child that ignores SIGTERM dies too.
    #[tokio::test]
    async fn a_stop_terms_then_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!(
            "cat; trap 'echo usage-so-far; exit 143' TERM; sh -c 'trap \"\" TERM; sleep 300' & echo $! > {}; echo started; wait; wait",
            pidfile.display()
        );
        let stop = CancellationToken::new();
        let (lines, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut spec = spec(dir.path(), &script, Duration::from_secs(60));
        spec.stop = Some(stop.clone());
        spec.stdout_lines = Some(lines);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(async move { run(spec, &cancel).await });
        while let Some(line) = seen.recv().await {
            if line.contains("started") {
                break;
            }
        }
        stop.cancel();
        let end = run.await.unwrap().unwrap();
        let ProcessEnd::Stopped { stdout, tail } = end else {
            panic!("{end:?}")
        };
        assert!(stdout.contains("usage-so-far"), "{stdout}");
        assert!(tail.contains("reached what was reserved"), "{tail}");
        assert_gone(&pidfile, "the child that ignored SIGTERM survived").await;
    }

    #[tokio::test]
    async fn a_background_child_holding_stdout_does_not_stall_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let end = run(
            spec(
                dir.path(),
                "cat; (sleep 300 &); echo done",
                Duration::from_secs(60),
            ),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let ProcessEnd::Exited { code, stdout, .. } = end else {
            panic!("{end:?}")
        };
        assert_eq!(code, Some(0));
        assert!(stdout.contains("done"), "{stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run waited for the background sleep"
        );
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let cancel = CancellationToken::new();
        let run = run(spec(dir.path(), &script, Duration::from_secs(60)), &cancel);
        let _ = tokio::time::timeout(Duration::from_millis(500), run).await;
        assert_gone(&pidfile, "the grandchild survived").await;
    }

    #[tokio::test]
    async fn a_hanging_process_and_its_children_die_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let end = run(
            spec(dir.path(), &script, Duration::from_millis(500)),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(matches!(end, ProcessEnd::TimedOut { .. }), "{end:?}");
        assert_gone(&pidfile, "the grandchild survived").await;
    }

    #[test]
    fn tails_are_bounded() {
        assert_eq!(tail("short\n"), "short");
        let long = "é".repeat(TAIL_BYTES);
        assert!(tail(&long).len() <= TAIL_BYTES + 4);
    }
}
