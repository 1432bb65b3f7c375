//! `damascus webhook add|list|show|remove|test|redrive`: webhooks are rows every
//! process delivers to; their deliveries are kept per event.

use anyhow::{bail, Context};
use damascus_db::webhooks::{self, NewWebhook, Outcome, Redrive};
use damascus_db::Target;
use sha2::{Digest, Sha256};

use crate::cli::WebhookCommand;
use crate::commands::open_migrated;
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

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
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
            if !valid_name(&name) {
                bail!("webhook name {name:?} must be 1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. chat)");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!(
                    "webhook URL {} must start with http:// or https://",
                    damascus_relay::host_of(&url)
                );
            }
            let secret = match secret {
                Some(secret) => {
                    damascus_relay::signature::parse_secret(&secret)?;
                    secret
                }
                None => damascus_relay::signature::new_secret(),
            };
            let event_kinds = (!events.is_empty()).then_some(events);
            let db = open_migrated(target).await?;
            let added = webhooks::add(
                &db.pool,
                &NewWebhook {
                    name,
                    url,
                    secret,
                    event_kinds,
                    max_attempts,
                },
            )
            .await?;
            println!("{}", added.secret);
            eprintln!(
                "webhook {} added ({}); events from now on are delivered to it, signed with the secret above (see it again with: damascus webhook show {})",
                added.name,
                damascus_relay::host_of(&added.url),
                added.name
            );
        }
        WebhookCommand::List => {
            let db = open_migrated(target).await?;
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
            let key = damascus_relay::signature::parse_secret(&webhook.secret)?;
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .context("cannot build an HTTP client")?;
            let event = damascus_db::events::Event {
                id: 0,
                item_id: None,
                kind: "webhook.test".into(),
                payload: serde_json::json!({"webhook": webhook.name}),
                created_at: chrono::Utc::now(),
            };
            match damascus_relay::post(&http, &webhook, &key, &event, Default::default()).await {
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
