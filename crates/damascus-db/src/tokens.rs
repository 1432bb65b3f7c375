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
