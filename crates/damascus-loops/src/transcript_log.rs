//! The agent's transcript as it happens: each line of its stdout read by the agent's
//! `StreamReader` into normalised events (`damascus_core::transcript`) and appended
//! to `<name>.transcript.jsonl` beside the raw log, one JSON object per line, so
//! `damascus logs --follow` shows the conversation while the agent works. The raw
//! output stays in `<name>.log`. For an agent that does not cap its own spend, the
//! usage read so far is priced after each line, and the run is asked to stop when it
//! reaches what was reserved for it.
//!
//! Must not touch: the verdict (the run's outcome is read by `agent`), the database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::StreamReader;

/// Dollars so far from what a reader has seen.
pub(crate) type SpendSoFar = Box<dyn Fn(&dyn StreamReader) -> f64 + Send>;

/// A stop asked when a run's priced usage reaches its reservation.
pub(crate) struct BudgetWatch {
    pub reserved: f64,
    pub usd: SpendSoFar,
    pub stop: CancellationToken,
}

/// A transcript being written.
pub(crate) struct TranscriptLog {
    task: JoinHandle<()>,
    reader: Arc<Mutex<Box<dyn StreamReader>>>,
}

/// The transcript file of a raw log file: `build-1.log` → `build-1.transcript.jsonl`.
pub(crate) fn path_for(log_file: &Path) -> PathBuf {
    log_file.with_extension("transcript.jsonl")
}

impl TranscriptLog {
    /// Starts writing the transcript of the lines sent to the returned sender (the
    /// process's stdout), read by `reader`, into `path`.
    pub fn start(
        path: PathBuf,
        reader: Box<dyn StreamReader>,
        watch: Option<BudgetWatch>,
    ) -> (mpsc::UnboundedSender<String>, TranscriptLog) {
        let (lines, mut received) = mpsc::unbounded_channel::<String>();
        let reader = Arc::new(Mutex::new(reader));
        let shared = reader.clone();
        let task = tokio::spawn(async move {
            // Opened at the first event: an agent whose output has none (a command
            // that prints plain text) leaves no transcript, only its raw log.
            let mut file: Option<tokio::fs::File> = None;
            let mut failed = false;
            // A run that reported its end is not stopped for what that end says it
            // spent: there is nothing left to stop, only a result to keep.
            let mut ended = false;
            while let Some(line) = received.recv().await {
                let events = {
                    let mut reader = shared.lock().expect("the reader does not panic");
                    let events = reader.line(&line);
                    ended |= events.iter().any(|e| {
                        matches!(e, damascus_core::transcript::TranscriptEvent::Result { .. })
                    });
                    if let Some(watch) = &watch {
                        if !ended
                            && !watch.stop.is_cancelled()
                            && (watch.usd)(&**reader) >= watch.reserved
                        {
                            tracing::info!(
                                reserved = watch.reserved,
                                "the agent's usage reached its reservation; stopping it"
                            );
                            watch.stop.cancel();
                        }
                    }
                    events
                };
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
        });
        (lines, TranscriptLog { task, reader })
    }

    /// Waits for the last lines to be read (the process's stdout has closed) and hands
    /// the reader back. A transcript that does not finish within two seconds (a
    /// background process holding stdout) is left as it is.
    pub async fn finish(self) -> Arc<Mutex<Box<dyn StreamReader>>> {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.reader
    }
}
