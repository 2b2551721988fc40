//! Payments recorded on the command side: by hand through the API, announced by another
//! system, or taken by the payment saga ([`insert_payment`]).

use dhanman_plumbing::outbox;
use dhanman_schemas::events::{Envelope, FieldError, PaymentReceived, check_money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::lock_invoice;
use crate::input::{Amount, check_line};
use crate::{BOOKKEEPERS, Caller, Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewManualPayment {
    pub customer_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    pub method: Option<String>,
    pub reference: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RecordedPayment {
    pub payment_id: Uuid,
    pub customer_id: Uuid,
    pub invoice_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    pub invoice_status: Option<&'static str>,
    pub consistency_token: Uuid,
}

/// A payment recorded by hand (cash, cheque, a transfer seen on the statement).
pub async fn record_manual_payment(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewManualPayment,
) -> Result<RecordedPayment> {
    caller.require(BOOKKEEPERS, "recording a payment")?;
    record_manual_payment_with_id(conn, caller, input, Uuid::now_v7()).await
}

/// [`record_manual_payment`] under an id the caller chose (a payment announced by another
/// system keeps its id).
pub async fn record_manual_payment_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewManualPayment,
    payment_id: Uuid,
) -> Result<RecordedPayment> {
    let amount = input
        .amount
        .map(Amount::value)
        .ok_or_else(|| FieldError::new("amount", "is required"))?;
    let currency = input.currency.unwrap_or_else(|| "INR".to_string());
    check_money("amount", amount, &currency)?;
    let method = input.method.unwrap_or_else(|| "manual".to_string());
    check_line("method", Some(&method), 32)?;
    check_line("reference", input.reference.as_deref(), 200)?;

    let (customer_id, invoice_status) = match input.invoice_id {
        Some(invoice_id) => {
            // Lock the invoice: two payments racing for the same invoice are ordered here.
            let invoice = lock_invoice(conn, caller.organization_id, invoice_id)
                .await?
                .ok_or_else(|| {
                    FieldError::new("invoice_id", "no such invoice in this organization")
                })?;
            let (customer_id, invoice_currency, status) = (
                invoice.customer_id,
                invoice.currency.as_str(),
                invoice.status.as_str(),
            );
            if input.customer_id.is_some_and(|c| c != customer_id) {
                return Err(FieldError::new(
                    "customer_id",
                    "does not match the invoice's customer",
                )
                .into());
            }
            if invoice_currency != currency {
                return Err(FieldError::new(
                    "currency",
                    format!("must match the invoice currency {invoice_currency}"),
                )
                .into());
            }
            match status {
                "paid" => {
                    return Err(Error::Conflict(format!(
                        "invoice {invoice_id} is already paid"
                    )));
                }
                "void" => return Err(Error::Conflict(format!("invoice {invoice_id} is void"))),
                _ => {}
            }
            let outstanding = invoice.amount - invoice.paid;
            if amount > outstanding {
                return Err(FieldError::new(
                    "amount",
                    format!("exceeds the invoice's outstanding amount {outstanding}"),
                )
                .into());
            }
            let status = if amount == outstanding {
                "paid"
            } else {
                "open"
            };
            if status == "paid" {
                sqlx::query("update invoices set status = 'paid' where id = $1")
                    .bind(invoice_id)
                    .execute(&mut *conn)
                    .await?;
            }
            (customer_id, Some(status))
        }
        None => {
            let customer_id = input
                .customer_id
                .ok_or_else(|| FieldError::new("customer_id", "is required without invoice_id"))?;
            let found: Option<(Uuid,)> =
                sqlx::query_as("select id from customers where id = $1 and organization_id = $2")
                    .bind(customer_id)
                    .bind(caller.organization_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if found.is_none() {
                return Err(FieldError::new(
                    "customer_id",
                    "no such customer in this organization",
                )
                .into());
            }
            (customer_id, None)
        }
    };

    let amount = amount.round_dp(2);
    let consistency_token = insert_payment(
        conn,
        caller.organization_id,
        &caller.correlation_id,
        PaymentRow {
            payment_id,
            customer_id,
            invoice_id: input.invoice_id,
            amount,
            currency: &currency,
            method: &method,
            reference: input.reference.as_deref(),
        },
    )
    .await?;
    Ok(RecordedPayment {
        payment_id,
        customer_id,
        invoice_id: input.invoice_id,
        amount,
        currency,
        invoice_status,
        consistency_token,
    })
}

/// A payment as [`insert_payment`] records it.
pub struct PaymentRow<'a> {
    pub payment_id: Uuid,
    pub customer_id: Uuid,
    pub invoice_id: Option<Uuid>,
    /// Already rounded to two places and checked against the invoice, if any.
    pub amount: Decimal,
    pub currency: &'a str,
    pub method: &'a str,
    pub reference: Option<&'a str>,
}

/// Writes the payment row and its `PaymentReceived` in the caller's transaction; returns
/// the event id (the consistency token). Every way money comes in (by hand, through the
/// payment saga) records it here; marking the invoice paid is the caller's part.
pub async fn insert_payment(
    conn: &mut PgConnection,
    organization_id: Uuid,
    correlation_id: &str,
    payment: PaymentRow<'_>,
) -> Result<Uuid> {
    let PaymentRow {
        payment_id,
        customer_id,
        invoice_id,
        amount,
        currency,
        method,
        reference,
    } = payment;
    sqlx::query(
        "insert into payments (id, organization_id, customer_id, invoice_id, amount, currency, method, reference)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(payment_id)
    .bind(organization_id)
    .bind(customer_id)
    .bind(invoice_id)
    .bind(amount)
    .bind(currency)
    .bind(method)
    .bind(reference)
    .execute(&mut *conn)
    .await?;

    let event = PaymentReceived {
        envelope: Envelope::new(organization_id, correlation_id, None),
        payment_id,
        invoice_id,
        customer_id,
        amount,
        currency: currency.to_string(),
        method: method.to_string(),
        reference: reference.map(str::to_string),
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%payment_id, %customer_id, %amount, event_id = %consistency_token, "payment recorded");
    Ok(consistency_token)
}
