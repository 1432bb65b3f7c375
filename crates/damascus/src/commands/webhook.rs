//! `damascus webhook add|list|show|remove|test|redrive`: webhooks are rows every
//! process delivers to; their deliveries are kept per event.

use anyhow::bail;
use damascus_db::webhooks::{self, Outcome, Redrive};
use damascus_db::Target;
use damascus_relay::register::WebhookRequest;
use sha2::{Digest, Sha256};

use crate::cli::WebhookCommand;
use crate::commands::{open_migrated, print_json};
use crate::table;

/// The name a webhook given in DAMASCUS_WEBHOOKS is registered under: `env-` and the
/// first 8 hex digits of the SHA-256 of its URL (no token in it).
pub fn env_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    format!(
        "env-{}",
        digest[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

pub async fn run(target: &Target, command: WebhookCommand) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Add {
            name,
            url,
            secret,
            events,
            max_attempts,
        } => {
            let new = damascus_relay::register::new_webhook(WebhookRequest {
                name,
                url,
                secret,
                events,
                max_attempts: Some(i64::from(max_attempts)),
            })?;
            let db = open_migrated(target).await?;
            let added = webhooks::add(&db.pool, &new).await?;
            println!("{}", added.secret);
            eprintln!(
                "webhook {} added ({}); events from now on are delivered to it, signed with the secret above (see it again with: damascus webhook show {})",
                added.name,
                damascus_relay::host_of(&added.url),
                added.name
            );
        }
        WebhookCommand::List { json } => {
            let db = open_migrated(target).await?;
            if json {
                return print_json(&damascus_api::views::webhook_list(&db.pool).await?);
            }
            let rows: Vec<Vec<String>> = webhooks::list(&db.pool)
                .await?
                .into_iter()
                .map(|w| {
                    vec![
                        w.webhook.name.clone(),
                        damascus_relay::host_of(&w.webhook.url),
                        w.webhook
                            .event_kinds
                            .as_ref()
                            .map(|k| k.join(","))
                            .unwrap_or_else(|| "all".into()),
                        w.pending.to_string(),
                        w.retrying.to_string(),
                        w.dead.to_string(),
                        w.delivered.to_string(),
                        w.oldest_undelivered_secs
                            .map(|s| format!("{s:.0}s"))
                            .unwrap_or_else(|| "-".into()),
                        w.last_error.unwrap_or_default(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no webhooks yet; add one with: damascus webhook add NAME URL");
                return Ok(());
            }
            print!(
                "{}",
                table::render(
                    &[
                        "NAME",
                        "HOST",
                        "EVENTS",
                        "PENDING",
                        "RETRYING",
                        "DEAD",
                        "DELIVERED",
                        "OLDEST",
                        "LAST ERROR"
                    ],
                    &rows
                )
            );
        }
        WebhookCommand::Show { name } => {
            let db = open_migrated(target).await?;
            let webhook = webhooks::get(&db.pool, &name).await?;
            println!("name     {}", webhook.name);
            println!("url      {}", webhook.url);
            println!("secret   {}", webhook.secret);
            println!(
                "events   {}",
                webhook
                    .event_kinds
                    .map(|k| k.join(", "))
                    .unwrap_or_else(|| "all".into())
            );
            println!("attempts {} per event", webhook.max_attempts);
        }
        WebhookCommand::Remove { name } => {
            let db = open_migrated(target).await?;
            webhooks::remove(&db.pool, &name).await?;
            println!("webhook {name} removed, with its deliveries");
        }
        WebhookCommand::Test { name } => {
            let db = open_migrated(target).await?;
            let webhook = webhooks::get(&db.pool, &name).await?;
            match damascus_relay::register::send_test(&webhook).await {
                Outcome::Delivered { status } => {
                    println!("webhook {name} took a signed webhook.test event ({status})")
                }
                Outcome::Failed { error, .. } => {
                    bail!("webhook {name} did not take the test event: {error}")
                }
            }
        }
        WebhookCommand::Redrive { name, since, event } => {
            let which = match (since, event) {
                (Some(at), _) => Redrive::Since(at),
                (None, Some(id)) => Redrive::Event(id),
                (None, None) => Redrive::Dead,
            };
            let db = open_migrated(target).await?;
            let queued = webhooks::redrive(&db.pool, &name, which).await?;
            println!("{queued} deliveries to {name} queued again");
        }
    }
    Ok(())
}
