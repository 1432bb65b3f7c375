//! `damascus logs ID [--follow]`: the agent's and the tests' output for an item, from
//! the log files the loops write under `<data-dir>/logs/<item>/` as output arrives.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use damascus_core::Phase;
use damascus_db::{items, Target};

use crate::commands::open_migrated;

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Prints what was added to each file since the last call; returns whether anything was.
fn print_new(dir: &Path, offsets: &mut BTreeMap<PathBuf, u64>) -> anyhow::Result<bool> {
    let mut printed = false;
    let mut out = std::io::stdout().lock();
    for path in log_files(dir) {
        let offset = offsets.entry(path.clone()).or_insert(0);
        let mut file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        if len <= *offset {
            continue;
        }
        if *offset == 0 {
            writeln!(
                out,
                "==> {} <==",
                path.file_name().unwrap_or_default().to_string_lossy()
            )?;
        }
        file.seek(SeekFrom::Start(*offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        out.write_all(&bytes)?;
        *offset = len;
        printed = true;
    }
    out.flush()?;
    Ok(printed)
}

pub async fn run(target: &Target, data_dir: &Path, id: i64, follow: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    items::get_item(&db.pool, id).await?;
    let dir = data_dir.join("logs").join(id.to_string());
    let mut offsets = BTreeMap::new();
    if !print_new(&dir, &mut offsets)? && !follow {
        println!(
            "no output yet for item {id} (logs live in {})",
            dir.display()
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
        if print_new(&dir, &mut offsets)? {
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
