//! A void is checked against the invoice it reverses before it is posted. The command side
//! voids only an open, unpaid invoice, in full, once; an `InvoiceVoided` that says
//! otherwise (no invoice of its organization posted, another customer, amount or currency
//! than the invoice's, an invoice voided before by another event) would credit a receivable
//! the books never held, or twice, and is refused as poison: dead-lettered with the reason,
//! the rest of its batch posted.
//!
//! An invoice and its void travel on one topic under one key (the customer), so the
//! invoice is always read first: from the journal, or earlier in the same batch.

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{AR, Entry};
use crate::runtime::ApplyError;

const INVOICE: &str = "invoice";
const VOID: &str = "invoice_void";

/// An invoice's or a void's entry in the journal, with its receivable line.
#[derive(sqlx::FromRow)]
struct PostedRow {
    organization_id: Uuid,
    reference_id: Uuid,
    reference_type: String,
    id: Uuid,
    currency: String,
    party_id: Option<Uuid>,
    amount: Decimal,
}

/// What an invoice's entry, or its void's, puts on the receivable.
#[derive(Debug)]
struct Receivable {
    customer: Option<Uuid>,
    /// Debit less credit: the invoice's amount, or minus the void's.
    amount: Decimal,
    currency: String,
}

/// Refuses the first void of `entries` (in their order) that does not reverse exactly one
/// posted invoice in full; nothing to do without voids.
pub(super) async fn check(conn: &mut PgConnection, entries: &[Entry]) -> Result<(), ApplyError> {
    let (orgs, invoices): (Vec<Uuid>, Vec<Uuid>) = entries
        .iter()
        .filter(|e| e.reference_type == VOID)
        .map(|e| (e.source.organization_id, e.reference_id))
        .unzip();
    if invoices.is_empty() {
        return Ok(());
    }
    let rows: Vec<PostedRow> = sqlx::query_as(
        "select j.organization_id, j.reference_id, j.reference_type, j.id, j.currency,
                p.party_id, p.debit - p.credit as amount
           from unnest($1::uuid[], $2::uuid[]) as k(org, id)
           join journal_entries j on j.organization_id = k.org and j.reference_id = k.id
           join postings p on p.entry_id = j.id and p.account_code = $3
          where j.reference_type in ($4, $5)",
    )
    .bind(&orgs)
    .bind(&invoices)
    .bind(AR)
    .bind(INVOICE)
    .bind(VOID)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let mut posted: HashMap<(Uuid, Uuid), Receivable> = HashMap::new();
    let mut voided: HashMap<(Uuid, Uuid), Uuid> = HashMap::new();
    for row in rows {
        let key = (row.organization_id, row.reference_id);
        if row.reference_type == VOID {
            voided.insert(key, row.id);
        } else {
            posted.insert(
                key,
                Receivable {
                    customer: row.party_id,
                    amount: row.amount,
                    currency: row.currency,
                },
            );
        }
    }
    for entry in entries {
        let key = (entry.source.organization_id, entry.reference_id);
        match entry.reference_type {
            INVOICE => {
                posted.entry(key).or_insert_with(|| receivable(entry));
            }
            VOID => {
                match voided.get(&key) {
                    // This very void, posted before: `post` leaves it out.
                    Some(id) if *id == entry.id => continue,
                    Some(id) => {
                        return Err(refused(entry, format!("was voided before (entry {id})")));
                    }
                    None => {}
                }
                let Some(invoice) = posted.get(&key) else {
                    return Err(refused(entry, "has no posted entry to void".into()));
                };
                let void = receivable(entry);
                let name = |c: Option<Uuid>| c.map_or_else(|| "none".into(), |c| c.to_string());
                let differs = if void.customer != invoice.customer {
                    Some(("customer_id", name(invoice.customer), name(void.customer)))
                } else if void.currency != invoice.currency {
                    Some(("currency", invoice.currency.clone(), void.currency))
                } else if -void.amount != invoice.amount {
                    let reversed = -void.amount;
                    Some(("amount", invoice.amount.to_string(), reversed.to_string()))
                } else {
                    None
                };
                if let Some((field, invoice_has, void_says)) = differs {
                    return Err(ApplyError::Poison(format!(
                        "{field}: the void of invoice {} says {void_says}, the invoice {invoice_has}",
                        entry.reference_id,
                    )));
                }
                voided.insert(key, entry.id);
            }
            _ => {}
        }
    }
    Ok(())
}

fn receivable(entry: &Entry) -> Receivable {
    let ar = entry.lines.iter().find(|l| l.account_code == AR);
    Receivable {
        customer: ar.and_then(|l| l.party_id),
        amount: ar.map_or(Decimal::ZERO, |l| l.debit - l.credit),
        currency: entry.currency.clone(),
    }
}

fn refused(entry: &Entry, why: String) -> ApplyError {
    ApplyError::Poison(format!(
        "invoice_id: invoice {} of organization {} {why}",
        entry.reference_id, entry.source.organization_id
    ))
}
