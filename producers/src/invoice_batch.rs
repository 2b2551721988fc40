//! Invoices in batches (`POST /v1/invoices/batch`): up to [`MAX_BATCH`] invoices in one
//! transaction, each judged on its own. An invalid item gets its own 422 (its fields named
//! `invoices[i].<field>`), a taken number its own 409, and the others are created. The
//! writes are one statement per table for the whole batch: the invoices, then their
//! `InvoiceCreated` events and their first emails (`SendInvoiceEmail`) in the outbox.
//! The batch is one command: one `Idempotency-Key` covers it.

use std::collections::{HashMap, HashSet};

use dhanman_plumbing::outbox;
use dhanman_schemas::events::{FieldError, InvoiceCreated, SendInvoiceEmail};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::invoice_email::first_email;
use crate::sales::{
    CheckedInvoice, CreatedInvoice, NewInvoice, check_invoice, insert_invoices, invoice_created,
};
use crate::{BOOKKEEPERS, Caller, Error, Result};

/// Invoices one batch may hold.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Serialize)]
pub struct InvoiceBatch {
    pub created: usize,
    pub failed: usize,
    /// One per item, in the order sent.
    pub results: Vec<ItemResult>,
}

#[derive(Debug, Serialize)]
pub struct ItemResult {
    pub index: usize,
    /// What the item alone would have been answered: 201, 409 or 422.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<CreatedInvoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ItemResult {
    fn invalid(index: usize, e: FieldError) -> Self {
        ItemResult {
            index,
            status: 422,
            invoice: None,
            error: Some("validation_failed"),
            field: Some(match e.field.as_str() {
                "" => format!("invoices[{index}]"),
                field => format!("invoices[{index}].{field}"),
            }),
            message: Some(e.message),
        }
    }

    fn conflict(index: usize, message: String) -> Self {
        ItemResult {
            index,
            status: 409,
            invoice: None,
            error: Some("conflict"),
            field: Some(format!("invoices[{index}].invoice_number")),
            message: Some(message),
        }
    }
}

/// Creates the valid items of `items` (each already parsed, or the field error its JSON
/// had) and reports on every one.
pub async fn create_invoices(
    conn: &mut PgConnection,
    caller: &Caller,
    items: Vec<Result<NewInvoice, FieldError>>,
) -> Result<InvoiceBatch> {
    caller.require(BOOKKEEPERS, "creating invoices")?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(
            FieldError::new("invoices", format!("must hold 1 to {MAX_BATCH} invoices")).into(),
        );
    }
    let mut results: Vec<Option<ItemResult>> = Vec::new();
    results.resize_with(items.len(), || None);
    let mut checked: Vec<(usize, CheckedInvoice)> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item.and_then(check_invoice) {
            Ok(invoice) => checked.push((index, invoice)),
            Err(e) => results[index] = Some(ItemResult::invalid(index, e)),
        }
    }

    // The customers, each once: active ones in this organization, with their addresses.
    let ids: Vec<Uuid> = checked
        .iter()
        .map(|(_, c)| c.customer_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<(Uuid, bool, Option<String>)> = sqlx::query_as(
        "select c.id, c.active, c.email
           from unnest($2::uuid[]) as u(id)
           join customers c on c.id = u.id
          where c.organization_id = $1",
    )
    .bind(caller.organization_id)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let customers: HashMap<Uuid, (bool, Option<String>)> =
        rows.into_iter().map(|(id, a, e)| (id, (a, e))).collect();

    let mut accepted: Vec<(usize, Uuid, String, CheckedInvoice)> = Vec::new();
    // Numbers asked for, to look up; one made from a new invoice's id is taken by no one.
    let mut chosen: Vec<String> = Vec::new();
    let mut numbers_seen: HashSet<String> = HashSet::new();
    for (index, invoice) in checked {
        let problem = match customers.get(&invoice.customer_id) {
            None => Some("no such customer in this organization"),
            Some((false, _)) => Some("customer is inactive"),
            Some((true, _)) => None,
        };
        if let Some(message) = problem {
            let e = FieldError::new("customer_id", message);
            results[index] = Some(ItemResult::invalid(index, e));
            continue;
        }
        let id = Uuid::now_v7();
        let number = invoice.number(id);
        if !numbers_seen.insert(number.clone()) {
            let message = format!("invoice_number {number} appears earlier in this batch");
            results[index] = Some(ItemResult::conflict(index, message));
            continue;
        }
        if invoice.chosen_number().is_some() {
            chosen.push(number.clone());
        }
        accepted.push((index, id, number, invoice));
    }
    let taken: HashSet<String> = if chosen.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(
            "select invoice_number from invoices
              where organization_id = $1 and invoice_number = any($2)",
        )
        .bind(caller.organization_id)
        .bind(&chosen)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };

    let mut events: Vec<InvoiceCreated> = Vec::with_capacity(accepted.len());
    let mut emails: Vec<SendInvoiceEmail> = Vec::with_capacity(accepted.len());
    let mut answers: Vec<(usize, CreatedInvoice)> = Vec::with_capacity(accepted.len());
    for (index, id, number, invoice) in accepted {
        if taken.contains(&number) {
            let message = format!("invoice_number {number} already exists in this organization");
            results[index] = Some(ItemResult::conflict(index, message));
            continue;
        }
        let email = customers
            .get(&invoice.customer_id)
            .and_then(|(_, e)| e.clone());
        let event = invoice_created(caller, invoice, id, number);
        let created = CreatedInvoice::of(&event);
        emails.push(first_email(caller, &created, email.as_deref()));
        events.push(event);
        answers.push((index, created));
    }
    insert(conn, caller, &events).await?;
    let mut rows = Vec::with_capacity(events.len() + emails.len());
    for event in &events {
        rows.push(outbox::row(event)?);
    }
    for email in &emails {
        rows.push(outbox::row(email)?);
    }
    outbox::enqueue_rows(conn, &rows).await?;
    for (index, created) in answers {
        results[index] = Some(ItemResult {
            index,
            status: 201,
            invoice: Some(created),
            error: None,
            field: None,
            message: None,
        });
    }
    let results: Vec<ItemResult> = results.into_iter().flatten().collect();
    let created = events.len();
    tracing::info!(created, failed = results.len() - created, "invoice batch");
    Ok(InvoiceBatch {
        created,
        failed: results.len() - created,
        results,
    })
}

/// The invoices' rows, in one statement. A number taken since it was looked up (another
/// command's, committed meanwhile) fails the batch as a conflict: sent again, that item
/// gets its own 409.
async fn insert(conn: &mut PgConnection, caller: &Caller, events: &[InvoiceCreated]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    match insert_invoices(conn, caller, events).await {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Error::Conflict(
            "an invoice number in this batch was taken by another request meanwhile; send the batch again"
                .into(),
        )),
        other => Ok(other?),
    }
}
