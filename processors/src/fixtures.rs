//! Records the unit tests build: the fields a test varies are arguments, the rest fixed.

use dhanman_schemas::events::{Envelope, InvoiceCreated};
use uuid::Uuid;

/// A fresh envelope of a new organization.
pub(crate) fn envelope() -> Envelope {
    Envelope::new(Uuid::now_v7(), "c", None)
}

/// An INR invoice issued 2026-12-01, due 2026-12-10, without its v2 fields.
pub(crate) fn invoice(invoice_id: Uuid, customer_id: Uuid, amount: &str) -> InvoiceCreated {
    InvoiceCreated {
        envelope: envelope(),
        invoice_id,
        customer_id,
        invoice_number: "INV-1".into(),
        amount: amount.parse().expect("a decimal amount"),
        currency: "INR".into(),
        issue_date: "2026-12-01".parse().expect("a date"),
        due_date: "2026-12-10".parse().expect("a date"),
        description: None,
        period: None,
        tax_amount: None,
    }
}
