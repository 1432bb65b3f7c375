//! `damascus token create|list|revoke`.

use damascus_db::{tokens, Target};

use crate::commands::open_migrated;
use crate::table;

pub async fn create(target: &Target, name: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let token = tokens::create(&db.pool, name).await?;
    println!("{}", token.token);
    eprintln!("token {:?} created; it is shown only now: store it, then send it as 'Authorization: Bearer <token>'", token.name);
    Ok(())
}

pub async fn list(target: &Target) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let rows: Vec<Vec<String>> = tokens::list(&db.pool)
        .await?
        .into_iter()
        .map(|t| {
            vec![
                t.name,
                t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                t.last_used_at
                    .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "never".into()),
                if t.revoked_at.is_some() {
                    "revoked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["NAME", "CREATED", "LAST USED", "STATE"], &rows)
    );
    Ok(())
}

pub async fn revoke(target: &Target, name: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    tokens::revoke(&db.pool, name).await?;
    println!("token {name:?} revoked");
    Ok(())
}
