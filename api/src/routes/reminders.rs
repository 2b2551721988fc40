//! Payment reminder timers (`payment_reminders`, kept by the reminders processor), one per
//! invoice: the caller's organization only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::consistency::wait_for;
use crate::extract::{Auth, Params};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReminderQuery {
    pub invoice_id: Option<String>,
    pub consistent_with: Option<String>,
}

/// One timer. `state`: scheduled, fired, cancelled or skipped_no_address.
#[derive(Debug, Serialize)]
pub struct ReminderTimer {
    invoice_id: Uuid,
    customer_id: Option<Uuid>,
    state: String,
    fire_at: Option<DateTime<Utc>>,
    due_date: Option<NaiveDate>,
    amount: Option<Decimal>,
    currency: Option<String>,
    cancel_reason: Option<String>,
    cancelled_by_event_id: Option<Uuid>,
    fired_command_id: Option<Uuid>,
    fired_by: Option<Uuid>,
    attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// `GET /v1/reminders?invoice_id=`: the invoice's reminder timer; 404 when the invoice has
/// none in the caller's organization (not seen yet, or another organization's).
pub async fn reminder(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<ReminderQuery>,
) -> Result<Json<ReminderTimer>, ApiError> {
    let invoice_id: Uuid = match q.invoice_id.as_deref().map(str::trim) {
        None | Some("") => return Err(ApiError::validation("invoice_id", "is required")),
        Some(raw) => raw
            .parse()
            .map_err(|_| ApiError::validation("invoice_id", "must be a UUID"))?,
    };
    wait_for(&state, "reminders", q.consistent_with.as_deref()).await?;
    let timer = sqlx::query_as!(
        ReminderTimer,
        "select invoice_id, customer_id, state, fire_at, due_date, amount,
                btrim(currency) as currency, cancel_reason, cancelled_by_event_id,
                fired_command_id, fired_by, attempts, last_error, created_at, updated_at
           from payment_reminders
          where invoice_id = $1 and organization_id = $2",
        invoice_id,
        caller.organization_id
    )
    .fetch_optional(&state.pool)
    .await?;
    timer
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("payment reminder".into()))
}
