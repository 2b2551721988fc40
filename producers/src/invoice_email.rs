//! Invoice emails: the `SendInvoiceEmail` command, issued in the transaction of each invoice
//! the product creates (template `invoice`) and for each copy a bookkeeper asks for later
//! (`POST /v1/invoices/{id}/email`, template `invoice_copy` unless the request names one).
//! The notifier sends one email per command and recipient; `InvoiceCreated` itself tells no
//! one, so a service that issues its own command (one bridged from RabbitMQ) is not doubled.

use dhanman_plumbing::outbox;
use dhanman_schemas::events::{
    Envelope, FieldError, SendInvoiceEmail, check_invoice_template, invoice_email,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::sales::CreatedInvoice;
use crate::{BOOKKEEPERS, Caller, Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailInvoice {
    /// `invoice` or `invoice_copy` (the default).
    pub template: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IssuedInvoiceEmail {
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub recipient: String,
    pub template: String,
    /// The command's event id: the notification log lists it as `event_id`.
    pub command_id: Uuid,
}

/// What the command copies from the invoice and its customer.
#[derive(sqlx::FromRow)]
struct ToEmail {
    customer_id: Uuid,
    amount: Decimal,
    currency: String,
    due_date: chrono::NaiveDate,
    status: String,
    email: Option<String>,
}

/// A copy of an invoice to its customer, asked for by a bookkeeper.
pub async fn email_invoice(
    conn: &mut PgConnection,
    caller: &Caller,
    invoice_id: Uuid,
    input: EmailInvoice,
) -> Result<IssuedInvoiceEmail> {
    caller.require(BOOKKEEPERS, "emailing an invoice")?;
    let template = input
        .template
        .unwrap_or_else(|| invoice_email::COPY.to_string());
    check_invoice_template("template", &template)?;
    let found: Option<ToEmail> = sqlx::query_as(
        "select i.customer_id, i.amount, i.currency::text as currency, i.due_date,
                i.status::text as status, c.email
           from invoices i join customers c on c.id = i.customer_id
          where i.id = $1 and i.organization_id = $2",
    )
    .bind(invoice_id)
    .bind(caller.organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let invoice = found.ok_or(Error::NotFound("invoice"))?;
    if invoice.status == "void" {
        return Err(Error::Conflict(format!(
            "invoice {invoice_id} is void; a void invoice is not sent"
        )));
    }
    let recipient = address(invoice.email.as_deref()).ok_or_else(|| {
        FieldError::new(
            "invoice_id",
            "the invoice's customer has no email address; add one to the customer first",
        )
    })?;
    let command = SendInvoiceEmail {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        invoice_id,
        customer_id: invoice.customer_id,
        recipient: recipient.clone(),
        amount: invoice.amount,
        currency: invoice.currency,
        due_date: invoice.due_date,
        template: Some(template.clone()),
    };
    let command_id = outbox::enqueue(conn, &command).await?;
    tracing::info!(%invoice_id, %command_id, template, "invoice email issued");
    Ok(IssuedInvoiceEmail {
        invoice_id,
        customer_id: invoice.customer_id,
        recipient,
        template,
        command_id,
    })
}

/// The first email of an invoice just created, caused by its `InvoiceCreated` and written
/// with it ([`crate::sales::create_invoice_with_id`]), for a customer whose address is
/// `email`. A customer without one gets the command with an empty recipient: the notifier
/// records it as skipped, with the reason, where it can be seen.
pub fn first_email(
    caller: &Caller,
    invoice: &CreatedInvoice,
    email: Option<&str>,
) -> SendInvoiceEmail {
    SendInvoiceEmail {
        envelope: Envelope::new(
            caller.organization_id,
            &caller.correlation_id,
            Some(invoice.consistency_token.to_string()),
        ),
        invoice_id: invoice.invoice_id,
        customer_id: invoice.customer_id,
        recipient: address(email).unwrap_or_default(),
        amount: invoice.amount,
        currency: invoice.currency.clone(),
        due_date: invoice.due_date,
        template: Some(invoice_email::INVOICE.to_string()),
    }
}

fn address(email: Option<&str>) -> Option<String> {
    email
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}
