//! Budget reservations: what a model or agent call may spend, held in the database
//! before the call so that concurrent calls of one project cannot overspend its caps
//! together. A reservation counts against the caps until it is settled, in the
//! transaction that ends its claim: an end that records the run's real costs deletes
//! it (`settle`); an end without them (a cancel, a release at shutdown, a panic, a claim
//! lost and reaped) records it as a "spend unknown" ledger row for the amount reserved
//! (`record_unreported`). Must not touch: claims or items beyond their cost.

use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::DbResult;

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// No cap applies to this item: the call may spend what it needs.
    Unlimited,
    /// The call may spend up to this many USD.
    Granted(f64),
    /// The item has spent its whole budget of this many USD left (zero or less).
    ItemSpent { left: f64 },
    /// The project has spent its whole daily budget.
    ProjectSpent { left: f64 },
    /// Running calls hold what is left; it frees when they settle.
    Held {
        item_left: Option<f64>,
        project_left: Option<f64>,
    },
    /// The claim no longer holds its slot: the job runs elsewhere now.
    ClaimLost,
}

/// Reserves all the caps allow for a call of `item`'s running claim `claim`.
pub async fn reserve<'e>(db: impl PgExecutor<'e>, claim: Uuid, item: i64) -> DbResult<Reservation> {
    let row = sqlx::query(
        "select granted::float8 as granted, refused, item_left::float8 as item_left,
                project_left::float8 as project_left
         from damascus_reserve_budget($1, $2, null)",
    )
    .bind(claim)
    .bind(item)
    .fetch_one(db)
    .await?;
    let granted: Option<f64> = row.try_get("granted")?;
    let refused: Option<String> = row.try_get("refused")?;
    let item_left: Option<f64> = row.try_get("item_left")?;
    let project_left: Option<f64> = row.try_get("project_left")?;
    Ok(match (granted, refused.as_deref()) {
        (Some(usd), _) => Reservation::Granted(usd),
        (None, None) => Reservation::Unlimited,
        (None, Some("item")) => Reservation::ItemSpent {
            left: item_left.unwrap_or(0.0),
        },
        (None, Some("project")) => Reservation::ProjectSpent {
            left: project_left.unwrap_or(0.0),
        },
        (None, Some("claim")) => Reservation::ClaimLost,
        (None, Some(_)) => Reservation::Held {
            item_left,
            project_left,
        },
    })
}

/// What a run that ends spent, as far as the end knows it.
#[derive(Debug, Clone, Copy)]
pub enum Spend<'a> {
    /// The run reported its costs: they are recorded, and its reservations settled.
    Reported(&'a [damascus_core::CostEntry]),
    /// The run ended without a report (`why`, e.g. "the phase panicked"): what it
    /// reserved is recorded as spend unknown.
    Unreported { why: &'a str },
}

/// Settles the reservations of `claim`, whose real costs the caller records in the same
/// transaction.
pub(crate) async fn settle(conn: &mut PgConnection, claim: Uuid) -> DbResult<()> {
    sqlx::query("delete from budget_reservations where claim_token = $1")
        .bind(claim)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the reservations of `claims` as "spend unknown" ledger rows for the amounts
/// reserved (`damascus_record_unreported_spend`); the caller has locked their items.
/// Returns how many it recorded.
pub(crate) async fn record_unreported(
    conn: &mut PgConnection,
    claims: &[Uuid],
    why: &str,
) -> DbResult<i32> {
    Ok(
        sqlx::query_scalar("select damascus_record_unreported_spend($1, $2)")
            .bind(claims)
            .bind(why)
            .fetch_one(conn)
            .await?,
    )
}
