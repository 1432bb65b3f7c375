//! `damascus answer`: a person answers an item's question.

use damascus_db::{human, Target};

use crate::commands::open_migrated;

pub async fn answer(target: &Target, issue: i64, text: &str, by: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let answered = human::answer(&db.pool, issue, text, by).await?;
    match answered.resumed_in {
        Some(phase) => println!(
            "answered question #{issue} of item {}; the item resumes in {phase}",
            answered.issue.item_id
        ),
        None => println!(
            "answered question #{issue} of item {}",
            answered.issue.item_id
        ),
    }
    Ok(())
}
