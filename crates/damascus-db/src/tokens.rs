//! API tokens: created with a random secret that is shown once and stored only as its
//! SHA-256; verified by id, with the hash compared in constant time.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use subtle::ConstantTimeEq;

use crate::error::{DbError, DbResult};

const PREFIX: &str = "dmsc_";

/// A token as shown once at creation: `dmsc_<id>_<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: i64,
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub async fn create(pool: &PgPool, name: &str) -> DbResult<NewToken> {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id: i64 = sqlx::query_scalar("insert into api_tokens (name, secret_sha256) values ($1, $2) returning id")
        .bind(name)
        .bind(digest(&secret))
        .fetch_one(pool)
        .await
        .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("api_tokens_name_key") => DbError::TokenExists(name.to_owned()),
            Some("api_tokens_name_format") => DbError::Constraint(format!(
                "token name {name:?} is not allowed; use letters, digits, '.', '_' and '-' (e.g. ci-bot)"
            )),
            _ => DbError::from(e),
        })?;
    Ok(NewToken {
        id,
        name: name.to_owned(),
        token: format!("{PREFIX}{id}_{secret}"),
    })
}

/// The token's id when it is valid and not revoked.
pub async fn verify(pool: &PgPool, presented: &str) -> DbResult<Option<i64>> {
    let Some((id, secret)) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, secret)| Some((id.parse::<i64>().ok()?, secret)))
    else {
        return Ok(None);
    };
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "select secret_sha256 from api_tokens where id = $1 and revoked_at is null",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    // Hash even when there is no row, so both paths take the same time.
    let presented = digest(secret);
    let expected = stored.unwrap_or_else(|| vec![0u8; 32]);
    if bool::from(presented.ct_eq(&expected)) {
        sqlx::query("update api_tokens set last_used_at = now() where id = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute')")
            .bind(id)
            .execute(pool)
            .await?;
        Ok(Some(id))
    } else {
        Ok(None)
    }
}

pub async fn revoke(pool: &PgPool, name: &str) -> DbResult<()> {
    let done = sqlx::query(
        "update api_tokens set revoked_at = now() where name = $1 and revoked_at is null",
    )
    .bind(name)
    .execute(pool)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(DbError::TokenNotFound(name.to_owned()));
    }
    Ok(())
}

pub async fn list(pool: &PgPool) -> DbResult<Vec<TokenInfo>> {
    let rows = sqlx::query(
        "select id, name, created_at, last_used_at, revoked_at from api_tokens order by id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        })
        .collect()
}

/// The form a bootstrap token takes: `dmsc_0_` and 32 to 128 ASCII letters and digits.
/// Id 0 is never handed out by `create`, so it cannot collide with a created token.
pub fn check_bootstrap_token(token: &str) -> Result<(), String> {
    let secret = token.strip_prefix("dmsc_0_").ok_or_else(|| {
        "must start with dmsc_0_ (make one with: echo dmsc_0_$(openssl rand -hex 24))".to_owned()
    })?;
    if !(32..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "after dmsc_0_ it needs 32 to 128 letters and digits, got {} characters (make one with: echo dmsc_0_$(openssl rand -hex 24))",
            secret.chars().count()
        ));
    }
    Ok(())
}

/// What became of a bootstrap token at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The database had no token; this one is now valid, named `bootstrap`.
    Registered,
    /// This very token is already registered.
    AlreadyRegistered,
    /// Other tokens exist, so the bootstrap token was not registered.
    Ignored,
}

/// Registers `token` (checked by `check_bootstrap_token`) as token 0, named `bootstrap`,
/// when the database holds no token at all: the first API token of a deploy, given
/// through the environment so that nobody needs a shell in the container.
pub async fn register_bootstrap(pool: &PgPool, token: &str) -> DbResult<Bootstrap> {
    check_bootstrap_token(token)
        .map_err(|e| DbError::Constraint(format!("bootstrap token {e}")))?;
    let secret = &token["dmsc_0_".len()..];
    let hash = digest(secret);
    // One statement: two processes starting together register it once.
    let inserted = sqlx::query(
        "insert into api_tokens (id, name, secret_sha256) overriding system value
         select 0, 'bootstrap', $1
         where not exists (select 1 from api_tokens)
         on conflict do nothing",
    )
    .bind(&hash)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Bootstrap::Registered);
    }
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "select secret_sha256 from api_tokens where id = 0 and revoked_at is null",
    )
    .fetch_optional(pool)
    .await?;
    Ok(match stored {
        Some(stored) if bool::from(stored.ct_eq(&hash)) => Bootstrap::AlreadyRegistered,
        _ => Bootstrap::Ignored,
    })
}
