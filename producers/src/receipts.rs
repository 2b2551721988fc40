//! Copies of payment receipts: `POST /v1/payments/{id}/receipt` issues a
//! `SendPaymentReceipt` to the paying customer's address. The first receipt goes out when
//! the notifier reads the payment's `PaymentReceived`; a copy is a command of its own, so a
//! delivery of its own.

use dhanman_plumbing::outbox;
use dhanman_schemas::events::{Envelope, FieldError, SendPaymentReceipt};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{BOOKKEEPERS, Caller, Error, Result};

/// The request takes no field today; an empty object (or no body) is the whole of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailReceipt {}

#[derive(Debug, Serialize)]
pub struct IssuedReceipt {
    pub payment_id: Uuid,
    pub customer_id: Uuid,
    pub recipient: String,
    /// The command's event id: the notification log lists it as `event_id`.
    pub command_id: Uuid,
}

/// What the command copies from the payment and its customer.
#[derive(sqlx::FromRow)]
struct Paid {
    customer_id: Uuid,
    invoice_id: Option<Uuid>,
    amount: Decimal,
    currency: String,
    email: Option<String>,
}

pub async fn email_receipt(
    conn: &mut PgConnection,
    caller: &Caller,
    payment_id: Uuid,
    _input: EmailReceipt,
) -> Result<IssuedReceipt> {
    caller.require(BOOKKEEPERS, "emailing a receipt")?;
    let found: Option<Paid> = sqlx::query_as(
        "select p.customer_id, p.invoice_id, p.amount, p.currency::text as currency, c.email
           from payments p join customers c on c.id = p.customer_id
          where p.id = $1 and p.organization_id = $2",
    )
    .bind(payment_id)
    .bind(caller.organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Paid {
        customer_id,
        invoice_id,
        amount,
        currency,
        email,
    } = found.ok_or(Error::NotFound("payment"))?;
    let recipient = email
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            FieldError::new(
                "payment_id",
                "the paying customer has no email address; add one to the customer first",
            )
        })?;
    let command = SendPaymentReceipt {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        payment_id,
        invoice_id,
        customer_id,
        recipient: recipient.clone(),
        amount,
        currency: currency.trim().to_string(),
    };
    let command_id = outbox::enqueue(conn, &command).await?;
    tracing::info!(%payment_id, %command_id, "receipt copy issued");
    Ok(IssuedReceipt {
        payment_id,
        customer_id,
        recipient,
        command_id,
    })
}
