//! `damascus logs ID [--follow]`: the agent's and the tests' output for an item, from
//! the log files the loops write under `<data-dir>/logs/<item>/` as output arrives.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use damascus_api::logs::{self, LogTail};
use damascus_core::Phase;
use damascus_db::{items, Target};

use crate::commands::open_migrated;

/// Prints everything written since the last call; returns whether anything was.
fn print_new(tail: &mut LogTail) -> anyhow::Result<bool> {
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
            out.write_all(&chunk.bytes)?;
            printed = true;
        }
    }
    out.flush()?;
    Ok(printed)
}

pub async fn run(target: &Target, data_dir: &Path, id: i64, follow: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    items::get_item(&db.pool, id).await?;
    let mut tail = LogTail::new(logs::item_dir(&data_dir.join("logs"), id));
    if !print_new(&mut tail)? && !follow {
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
        if print_new(&mut tail)? {
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
