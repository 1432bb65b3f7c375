//! `damascus logs ID [--follow]`: the agent's and the tests' output for an item, from
//! the log files the loops write under `<data-dir>/logs/<item>/` as output arrives; an
//! agent's run whose output the loops read into a transcript is printed as that
//! conversation, one line per message, tool call and result.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use damascus_api::logs::{self, LogTail};
use damascus_core::transcript::TranscriptEvent;
use damascus_core::Phase;
use damascus_db::{items, Target};

use crate::commands::open_migrated;

/// What an agent's transcript file is called (`build-1.transcript.jsonl`, beside
/// `build-1.log`).
const TRANSCRIPT: &str = ".transcript.jsonl";

/// Prints an item's logs as they grow: an agent's transcript as a conversation, one
/// readable line per event, and of its raw log only what the transcript does not hold
/// (the JSON lines stay in the file); every other log as it is.
#[derive(Default)]
struct Printer {
    /// The part of the last line of each file read line by line not printed yet.
    pending: HashMap<String, String>,
}

impl Printer {
    /// Prints everything written since the last call; returns whether anything was.
    fn print_new(&mut self, tail: &mut LogTail) -> anyhow::Result<bool> {
        let mut printed = false;
        let mut out = std::io::stdout().lock();
        loop {
            let chunks = tail.read_new()?;
            if chunks.is_empty() {
                break;
            }
            for chunk in chunks {
                if chunk.first {
                    writeln!(out, "==> {} <==", chunk.file)?;
                }
                let transcript = chunk.file.ends_with(TRANSCRIPT);
                if !transcript && !has_transcript(tail.dir(), &chunk.file) {
                    out.write_all(&chunk.bytes)?;
                    printed = true;
                    continue;
                }
                let pending = self.pending.entry(chunk.file.clone()).or_default();
                pending.push_str(&chunk.text());
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if transcript {
                        match serde_json::from_str::<TranscriptEvent>(&line) {
                            Ok(event) => writeln!(out, "{}", event.line())?,
                            Err(_) => write!(out, "{line}")?,
                        }
                    } else if !is_agent_stream_line(&line) {
                        // The raw log of a run with a transcript: its JSON lines are
                        // in the transcript, readably; the rest (plain text, stderr,
                        // how it ended) is printed as it is.
                        write!(out, "{line}")?;
                    }
                }
                printed = true;
            }
        }
        out.flush()?;
        Ok(printed)
    }
}

/// A line of an agent's JSON stream (every agent's events are JSON objects with a
/// `type`: Claude Code's, Codex's, Gemini CLI's, OpenCode's), which its transcript
/// shows readably; the console's live log hides the same lines.
fn is_agent_stream_line(line: &str) -> bool {
    line.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"].is_string())
}

/// Whether `file` is a raw agent log whose transcript is beside it.
fn has_transcript(dir: &Path, file: &str) -> bool {
    file.strip_suffix(".log")
        .is_some_and(|stem| dir.join(format!("{stem}{TRANSCRIPT}")).exists())
}

pub async fn run(target: &Target, data_dir: &Path, id: i64, follow: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    items::get_item(&db.pool, id).await?;
    let mut tail = LogTail::new(logs::item_dir(&data_dir.join("logs"), id));
    let mut printer = Printer::default();
    if !printer.print_new(&mut tail)? && !follow {
        println!(
            "no output yet for item {id} (logs live in {})",
            tail.dir().display()
        );
    }
    if !follow {
        return Ok(());
    }
    let mut settled_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        if printer.print_new(&mut tail)? {
            settled_since = None;
        }
        let phase = items::get_item(&db.pool, id).await?.phase;
        if phase.is_final() || phase == Phase::Blocked {
            // Print what the last phase wrote while it ended, then stop.
            let since = *settled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                println!("[item {id} is {phase}]");
                return Ok(());
            }
        }
    }
}
