//! Sales commands and the invoice they act on. Each command runs in one transaction with
//! its outbox rows; `Idempotency-Key` makes retries safe.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use dhanman_producers::idempotency;
use dhanman_producers::invoice_batch;
use dhanman_producers::invoice_email::{self, EmailInvoice};
use dhanman_producers::receipts::{self, EmailReceipt};
use dhanman_producers::sales::{
    self, FirstEmail, Invoice, NewCustomer, NewInvoice, NewManualPayment, VoidInvoice,
};
use dhanman_producers::{BOOKKEEPERS, Caller, Result as CommandResult};
use dhanman_schemas::events::FieldError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::PgConnection;
use uuid::Uuid;

use super::ledger::Consistent;
use crate::consistency::wait_for_ledger;
use crate::extract::{Auth, JsonBody, OptionalJsonBody, Params, parse_item, path_uuid};
use crate::{ApiError, AppState};

/// A command's status and response, the JSON text answered and stored under its key: a
/// replay answers the same bytes.
pub(super) type CommandReply = (StatusCode, Json<Box<RawValue>>);

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

/// Who may run a command: checked before anything else, a stored response included.
#[derive(Clone, Copy)]
pub(super) struct Gate<'a> {
    pub roles: &'a [&'a str],
    /// What the command does, for the refusal (`creating an invoice`).
    pub what: &'a str,
}

impl<'a> Gate<'a> {
    pub(super) const fn new(roles: &'a [&'a str], what: &'a str) -> Self {
        Gate { roles, what }
    }

    pub(super) const fn bookkeepers(what: &'a str) -> Self {
        Gate::new(BOOKKEEPERS, what)
    }
}

/// The caller's role, checked before anything else (a stored response included), and the
/// request's `Idempotency-Key`, if it has one. Keys are the caller's own (organization,
/// user, key): another user's same key is another key.
fn gate_and_key(
    headers: &HeaderMap,
    caller: &Caller,
    gate: Gate<'_>,
    path: &str,
    body: &[u8],
) -> Result<Option<idempotency::Key>, ApiError> {
    caller.require(gate.roles, gate.what)?;
    let user_id = caller.user(gate.what)?;
    Ok(idempotency_key(headers)?.map(|key| idempotency::Key {
        organization_id: caller.organization_id,
        user_id,
        key,
        request_hash: idempotency::request_hash("POST", path, body),
    }))
}

/// A command that failed: the response an earlier use of its key got, if one did, else the
/// failure.
async fn failed(
    state: &AppState,
    key: Option<&idempotency::Key>,
    e: dhanman_producers::Error,
) -> Result<CommandReply, ApiError> {
    match key {
        Some(key) => replay(state, key).await?.ok_or_else(|| e.into()),
        None => Err(e.into()),
    }
}

fn reply<O: Serialize>(success: StatusCode, output: &O) -> Result<CommandReply, ApiError> {
    let response = serde_json::value::to_raw_value(output).map_err(ApiError::internal)?;
    Ok((success, Json(response)))
}

/// Runs a command in one transaction, answering `success` with its output, or replaying
/// the stored response for a retried `Idempotency-Key` ([`gate_and_key`]). The key is
/// recorded by the transaction's last statement; a retry's own work is rolled back (see
/// [`idempotency`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_command<I, O, F, const LIMIT: usize>(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    gate: Gate<'_>,
    path: &str,
    body: JsonBody<I, LIMIT>,
    success: StatusCode,
    command: F,
) -> Result<CommandReply, ApiError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: AsyncFnOnce(&mut PgConnection, &Caller, I) -> CommandResult<O>,
{
    let key = gate_and_key(headers, caller, gate, path, &body.bytes)?;
    let mut tx = state.pool.begin().await?;
    let output = match command(&mut tx, caller, body.value).await {
        Ok(output) => output,
        Err(e) => {
            drop(tx);
            return failed(state, key.as_ref(), e).await;
        }
    };
    let (status, Json(response)) = reply(success, &output)?;
    if let Some(key) = &key
        && !idempotency::record(&mut tx, key, status.as_u16(), response.get()).await?
    {
        drop(tx);
        return replay(state, key)
            .await?
            .ok_or_else(|| ApiError::internal("an idempotency key taken is not found"));
    }
    tx.commit().await?;
    Ok((status, Json(response)))
}

/// The earlier response to `key`, if it was used.
async fn replay(
    state: &AppState,
    key: &idempotency::Key,
) -> Result<Option<CommandReply>, ApiError> {
    let Some(r) = idempotency::earlier(&state.pool, key).await? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let body = RawValue::from_string(r.body).map_err(ApiError::internal)?;
    Ok(Some((status, Json(body))))
}

pub async fn create_customer(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewCustomer>,
) -> Result<CommandReply, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("creating a customer"),
        "/v1/customers",
        body,
        StatusCode::CREATED,
        sales::create_customer,
    )
    .await
}

/// `POST /v1/invoices`: written by the invoice writers, in a group with the invoices that
/// arrive meanwhile ([`crate::invoice_writer`]), answered as if written alone.
pub async fn create_invoice(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewInvoice>,
) -> Result<CommandReply, ApiError> {
    let gate = Gate::bookkeepers("creating an invoice");
    let key = gate_and_key(&headers, &caller, gate, "/v1/invoices", &body.bytes)?;
    let prepared = sales::prepare_invoice(&caller, body.value, Uuid::now_v7(), FirstEmail::Send);
    let written = match prepared {
        Ok(invoice) => {
            let org = caller.organization_id;
            state.invoices.write(org, invoice, key.clone()).await
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(created) => reply(StatusCode::CREATED, &created),
        Err(e) => failed(&state, key.as_ref(), e).await,
    }
}

/// Largest body of `POST /v1/invoices/batch` (1,000 invoices of a few hundred bytes).
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvoiceBatch {
    /// Each item's JSON text, parsed on its own so that its errors are its own.
    #[serde(default, deserialize_with = "at_most_a_batch")]
    invoices: Option<Vec<Box<RawValue>>>,
}

/// A batch's items, refused as soon as the list holds more than a batch may: a body of a
/// million tiny items is a 422 naming `invoices` before it becomes a million items in
/// memory (and their results).
fn at_most_a_batch<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Box<RawValue>>>, D::Error> {
    use serde::de::{self, SeqAccess, Visitor};
    use std::fmt;

    struct Items;
    impl<'de> Visitor<'de> for Items {
        type Value = Option<Vec<Box<RawValue>>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of 1 to {} invoices", invoice_batch::MAX_BATCH)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(Items)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<Box<RawValue>>()? {
                if items.len() == invoice_batch::MAX_BATCH {
                    return Err(de::Error::custom(format!(
                        "must hold 1 to {} invoices",
                        invoice_batch::MAX_BATCH
                    )));
                }
                items.push(item);
            }
            Ok(Some(items))
        }
    }
    deserializer.deserialize_option(Items)
}

/// Up to 1,000 invoices in one command: each item judged on its own (`results`, in order).
pub async fn create_invoice_batch(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewInvoiceBatch, MAX_BATCH_BODY_BYTES>,
) -> Result<CommandReply, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("creating invoices"),
        "/v1/invoices/batch",
        body,
        StatusCode::OK,
        async |conn: &mut PgConnection, caller: &Caller, input: NewInvoiceBatch| {
            let items = input
                .invoices
                .ok_or_else(|| FieldError::new("invoices", "is required"))?;
            let items = items.iter().map(|item| parse_item(item)).collect();
            invoice_batch::create_invoices(conn, caller, items).await
        },
    )
    .await
}

pub async fn record_manual_payment(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewManualPayment>,
) -> Result<CommandReply, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("recording a payment"),
        "/v1/payments/manual",
        body,
        StatusCode::CREATED,
        sales::record_manual_payment,
    )
    .await
}

pub async fn void_invoice(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<VoidInvoice>,
) -> Result<CommandReply, ApiError> {
    let invoice_id = path_uuid(&id, "invoice")?;
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("voiding an invoice"),
        &format!("/v1/invoices/{invoice_id}/void"),
        body,
        StatusCode::OK,
        async |conn: &mut PgConnection, caller: &Caller, input| {
            sales::void_invoice(conn, caller, invoice_id, input).await
        },
    )
    .await
}

/// A copy of the invoice to its customer (`SendInvoiceEmail`); 202: the notifier sends it.
pub async fn email_invoice(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<EmailInvoice>,
) -> Result<CommandReply, ApiError> {
    let invoice_id = path_uuid(&id, "invoice")?;
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("emailing an invoice"),
        &format!("/v1/invoices/{invoice_id}/email"),
        body,
        StatusCode::ACCEPTED,
        async |conn: &mut PgConnection, caller: &Caller, input| {
            invoice_email::email_invoice(conn, caller, invoice_id, input).await
        },
    )
    .await
}

/// A copy of a payment's receipt to the paying customer (`SendPaymentReceipt`); 202.
pub async fn email_receipt(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<EmailReceipt>,
) -> Result<CommandReply, ApiError> {
    let payment_id = path_uuid(&id, "payment")?;
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("emailing a receipt"),
        &format!("/v1/payments/{payment_id}/receipt"),
        body,
        StatusCode::ACCEPTED,
        async |conn: &mut PgConnection, caller: &Caller, input| {
            receipts::email_receipt(conn, caller, payment_id, input).await
        },
    )
    .await
}

pub async fn invoice(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<Consistent>,
) -> Result<Json<Invoice>, ApiError> {
    let invoice_id = path_uuid(&id, "invoice")?;
    let invoice = read_invoice(&state, &caller, invoice_id).await?;
    if q.consistent_with.is_none() {
        return Ok(invoice);
    }
    // The command writes the invoice row itself, so it is current already; waiting serves a
    // caller who reads it alongside ledger figures as of the same event.
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    read_invoice(&state, &caller, invoice_id).await
}

async fn read_invoice(
    state: &AppState,
    caller: &Caller,
    invoice_id: uuid::Uuid,
) -> Result<Json<Invoice>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    sales::find_invoice(&mut conn, caller, invoice_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("invoice".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_refused_at_its_1001st_item_before_the_rest_is_read() {
        // 1,001 items, then text that is not JSON: the refusal comes before it is reached.
        let body = format!(r#"{{"invoices": [{}, oops"#, ["1"; 1001].join(","));
        let err = serde_json::from_str::<NewInvoiceBatch>(&body).unwrap_err();
        assert!(err.is_data(), "{err}");
        assert!(err.to_string().contains("must hold 1 to 1000"), "{err}");
        // A thousand are taken; a missing or null list is left to the command to name.
        let body = format!(r#"{{"invoices": [{}]}}"#, ["1"; 1000].join(","));
        let batch: NewInvoiceBatch = serde_json::from_str(&body).unwrap();
        assert_eq!(batch.invoices.map(|i| i.len()), Some(1000));
        for body in ["{}", r#"{"invoices": null}"#] {
            let batch: NewInvoiceBatch = serde_json::from_str(body).unwrap();
            assert!(batch.invoices.is_none(), "{body}");
        }
    }
}
