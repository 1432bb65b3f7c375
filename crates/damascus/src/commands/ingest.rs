//! `damascus ingest`: a Markdown story from a file or standard input becomes an item.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context};
use damascus_core::{ProjectName, Story, StoryError};
use damascus_db::{items, Target};

use crate::cli::IngestArgs;
use crate::commands::open_migrated;

pub async fn run(target: &Target, args: IngestArgs) -> anyhow::Result<()> {
    let project = ProjectName::parse(&args.project)?;
    let bytes = read_story(&args.file)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {}); save the story as UTF-8 Markdown",
            shown(&args.file),
            e.utf8_error().valid_up_to()
        )
    })?;
    let story = Story::parse(&text, args.title.as_deref()).map_err(|e| {
        let hint = if e == StoryError::NoTitle {
            " (--title)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot ingest {}: {e}{hint}", shown(&args.file))
    })?;
    let db = open_migrated(target).await?;
    let mut locks = args.locks;
    locks.sort();
    locks.dedup();
    let gates = items::IntakeGates {
        depends_on: args.depends_on,
        locks,
    };
    let item = items::ingest_with(&db.pool, &project, &story, "cli", &gates).await?;
    println!(
        "ingested item {} into project {} (phase {}): {}",
        item.id, item.project, item.phase, item.title
    );
    Ok(())
}

fn read_story(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("no story given: pass a Markdown file, or pipe one on standard input");
        }
        let mut bytes = Vec::new();
        stdin
            .read_to_end(&mut bytes)
            .context("cannot read the story from standard input")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| {
        format!(
            "cannot read story file {}; give a Markdown file, or - for standard input",
            file.display()
        )
    })
}

fn shown(file: &Path) -> String {
    if file == Path::new("-") {
        "standard input".into()
    } else {
        file.display().to_string()
    }
}
