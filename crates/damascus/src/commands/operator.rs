//! `damascus item cancel|retry` and `damascus project pause|resume`.

use damascus_db::{operator, Target};

use crate::commands::open_migrated;

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}

pub async fn cancel(target: &Target, id: i64) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let done = operator::cancel(&db.pool, id, &who()).await?;
    let running = if done.was_running {
        "; the phase that was running is being stopped"
    } else {
        ""
    };
    println!("item {id} cancelled (it was in {}){running}", done.from);
    Ok(())
}

pub async fn retry(target: &Target, id: i64) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let phase = operator::retry(&db.pool, id, &who()).await?;
    println!("item {id} is back in {phase} with a fresh attempt budget");
    Ok(())
}

pub async fn pause(target: &Target, name: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let withdrawn = operator::pause_project(&db.pool, name).await?;
    println!("project {name} paused; {withdrawn} queued jobs withdrawn, running phases finish");
    Ok(())
}

pub async fn resume(target: &Target, name: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let items = operator::resume_project(&db.pool, name).await?;
    println!("project {name} resumed; {items} items queued again");
    Ok(())
}

pub async fn approve(target: &Target, id: i64) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    operator::approve(&db.pool, id, &who()).await?;
    println!("item {id} approved; its build is queued");
    Ok(())
}
