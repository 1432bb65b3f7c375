//! Budget reservations: what a model or agent call may spend, held in the database
//! before the call so that concurrent calls of one project cannot overspend its caps
//! together. A reservation lapses when its claim ends, in the transaction that records
//! the call's real cost (see migration `budget_reservations`).

use sqlx::{PgExecutor, Row};
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
