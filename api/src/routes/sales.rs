//! Sales commands. Each runs in one transaction with its outbox rows; `Idempotency-Key`
//! makes retries safe.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dhanman_producers::idempotency::{self, Claim};
use dhanman_producers::sales::{self, NewCustomer, NewInvoice, NewManualPayment};
use dhanman_producers::{Caller, Result as CommandResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgConnection;

use crate::extract::{Auth, JsonBody};
use crate::{ApiError, AppState};

type Created = (StatusCode, Json<Value>);

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::validation(
            "Idempotency-Key",
            "must be 1 to 255 characters",
        ));
    }
    Ok(Some(key.to_string()))
}

/// Runs a command in one transaction, replaying the stored response for a retried
/// `Idempotency-Key`.
async fn run_command<I, O, F>(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    path: &str,
    body: JsonBody<I>,
    command: F,
) -> Result<Created, ApiError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: AsyncFnOnce(&mut PgConnection, &Caller, I) -> CommandResult<O>,
{
    let key = idempotency_key(headers)?;
    let mut tx = state.pool.begin().await?;
    if let Some(key) = &key {
        let hash = idempotency::request_hash("POST", path, &body.bytes);
        if let Claim::Replay { status, body } =
            idempotency::claim(&mut tx, caller.organization_id, key, &hash).await?
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok((status, Json(body)));
        }
    }
    let output = command(&mut tx, caller, body.value).await?;
    let response = serde_json::to_value(&output).map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::store(&mut tx, caller.organization_id, key, 201, &response).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)))
}

pub async fn create_customer(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewCustomer>,
) -> Result<Created, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        "/v1/customers",
        body,
        sales::create_customer,
    )
    .await
}

pub async fn create_invoice(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewInvoice>,
) -> Result<Created, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        "/v1/invoices",
        body,
        sales::create_invoice,
    )
    .await
}

pub async fn record_manual_payment(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewManualPayment>,
) -> Result<Created, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        "/v1/payments/manual",
        body,
        sales::record_manual_payment,
    )
    .await
}
