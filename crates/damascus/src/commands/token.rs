//! `damascus token create|list|revoke` (`list --json`: `damascus_api::json::TokenJson`).

use damascus_api::json::TokenJson;
use damascus_db::{tokens, Target};

use crate::commands::{open_migrated, print_json};
use crate::table;

pub async fn create(target: &Target, name: &str) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let token = tokens::create(&db.pool, name).await?;
    println!("{}", token.token);
    eprintln!("token {:?} created; it is shown only now: store it, then send it as 'Authorization: Bearer <token>'", token.name);
    Ok(())
}

pub async fn list(target: &Target, json: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let listed = tokens::list(&db.pool).await?;
    if json {
        let shown: Vec<TokenJson> = listed.into_iter().map(TokenJson::from).collect();
        return print_json(&shown);
    }
    let rows: Vec<Vec<String>> = listed
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
