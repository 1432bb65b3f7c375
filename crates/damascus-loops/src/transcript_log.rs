//! The agent's transcript as it happens: each line of its stdout read into normalised
//! events (`damascus_core::transcript`) and appended to `<name>.transcript.jsonl`
//! beside the raw log, one JSON object per line, so `damascus logs --follow` shows the
//! conversation while the agent works. The raw output stays in `<name>.log`.
//!
//! Must not touch: the verdict (the run's outcome is read by `agent`), the database.

use std::path::{Path, PathBuf};

use damascus_core::transcript::claude_stream_events;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A transcript being written.
pub(crate) struct TranscriptLog {
    task: JoinHandle<Option<String>>,
}

/// The transcript file of a raw log file: `build-1.log` → `build-1.transcript.jsonl`.
pub(crate) fn path_for(log_file: &Path) -> PathBuf {
    log_file.with_extension("transcript.jsonl")
}

impl TranscriptLog {
    /// Starts writing the transcript of the lines sent to the returned sender (the
    /// process's stdout), into `path`.
    pub fn start(path: PathBuf) -> (mpsc::UnboundedSender<String>, TranscriptLog) {
        let (lines, mut received) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            // Opened at the first event: an agent whose output has none (a command
            // that prints plain text) leaves no transcript, only its raw log.
            let mut file: Option<tokio::fs::File> = None;
            let mut failed = false;
            let mut result_line = None;
            while let Some(line) = received.recv().await {
                let events = claude_stream_events(&line);
                if events
                    .iter()
                    .any(|e| matches!(e, damascus_core::transcript::TranscriptEvent::Result { .. }))
                {
                    result_line = Some(line);
                }
                if events.is_empty() || failed {
                    continue;
                }
                if file.is_none() {
                    match tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .await
                    {
                        Ok(opened) => file = Some(opened),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), "cannot write the agent's transcript: {e}");
                            failed = true;
                            continue;
                        }
                    }
                }
                let file = file.as_mut().expect("opened just now");
                let mut text = String::new();
                for event in events {
                    text.push_str(&serde_json::to_string(&event).expect("an event is JSON"));
                    text.push('\n');
                }
                let _ = file.write_all(text.as_bytes()).await;
                let _ = file.flush().await;
            }
            result_line
        });
        (lines, TranscriptLog { task })
    }

    /// Waits for the last lines to be written (the process's stdout has closed) and
    /// returns the agent's result line, if it printed one. A transcript that does not
    /// finish within two seconds (a background process holding stdout) is left.
    pub async fn finish(self) -> Option<String> {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await {
            Ok(Ok(line)) => line,
            _ => {
                abort.abort();
                None
            }
        }
    }
}
