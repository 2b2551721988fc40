//! Sales commands: customers (residents), invoices and payments ([`payments`]).

mod payments;

pub use payments::{
    NewManualPayment, PaymentRow, RecordedPayment, insert_payment, record_manual_payment,
    record_manual_payment_with_id,
};

use chrono::{DateTime, NaiveDate, Utc};
use dhanman_plumbing::outbox;
use dhanman_schemas::events::{
    Envelope, FieldError, InvoiceCreated, InvoiceVoided, check_money, check_period,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::idempotency;
use crate::input::{
    Amount, Breaks, Day, check_email, check_line, check_lines, required_line, trimmed,
};
use crate::{BOOKKEEPERS, Caller, Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    pub name: Option<String>,
    pub email: Option<String>,
    pub unit: Option<String>,
    /// Billed every month by the monthly-invoices job; absent means not billed monthly.
    pub monthly_charge: Option<Amount>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub unit: Option<String>,
    pub active: bool,
    pub monthly_charge: Option<Decimal>,
    pub monthly_currency: String,
}

pub async fn create_customer(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewCustomer,
) -> Result<Customer> {
    caller.require(BOOKKEEPERS, "creating a customer")?;
    let name = required_line("name", input.name.as_deref(), 200)?;
    check_line("unit", input.unit.as_deref(), 50)?;
    if let Some(email) = input.email.as_deref() {
        check_email("email", email)?;
    }
    let monthly_charge = input.monthly_charge.map(Amount::value);
    if let Some(charge) = monthly_charge {
        check_money("monthly_charge", charge, "INR")?;
    }
    let customer = sqlx::query_as(
        "insert into customers (id, organization_id, name, email, unit, monthly_charge)
         values ($1, $2, $3, $4, $5, $6)
         returning id, organization_id, name, email, unit, active, monthly_charge,
                   monthly_currency::text as monthly_currency",
    )
    .bind(Uuid::now_v7())
    .bind(caller.organization_id)
    .bind(name)
    .bind(&input.email)
    .bind(&input.unit)
    .bind(monthly_charge.map(|c| c.round_dp(2)))
    .fetch_one(conn)
    .await?;
    Ok(customer)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvoice {
    pub customer_id: Option<Uuid>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    pub due_date: Option<Day>,
    pub issue_date: Option<Day>,
    pub invoice_number: Option<String>,
    pub description: Option<String>,
    pub period: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedInvoice {
    pub invoice_id: Uuid,
    pub invoice_number: String,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub status: &'static str,
    /// Pass as `?consistent_with=` to a query to read after the ledger has posted it.
    pub consistency_token: Uuid,
}

/// Why no invoice was written for `id`: the customer is not in the caller's organization,
/// or is inactive.
async fn customer_refusal(conn: &mut PgConnection, organization_id: Uuid, id: Uuid) -> Error {
    let active: Result<Option<bool>, _> =
        sqlx::query_scalar("select active from customers where id = $1 and organization_id = $2")
            .bind(id)
            .bind(organization_id)
            .fetch_optional(conn)
            .await;
    match active {
        Ok(Some(true)) => Error::Conflict("the customer changed meanwhile; try again".into()),
        Ok(Some(false)) => FieldError::new("customer_id", "customer is inactive").into(),
        Ok(None) => FieldError::new("customer_id", "no such customer in this organization").into(),
        Err(e) => e.into(),
    }
}

/// The head of the statement that writes an invoice command's outbox rows, `u` (from
/// [`outbox::bind_rows`], with `to_customer`): a row marked `to_customer` is the customer's
/// email, its `recipient` set to `$email` (the customer's address as the statement read
/// it), or left empty. Shared by the single and the grouped invoice statements.
///
/// The email's JSON is written with an empty recipient, [`EMPTY_RECIPIENT`] in its text
/// (a string value holding those characters would have its quotes escaped), which the
/// statement replaces by the address as a JSON string: a quarter of the time `jsonb_set`
/// took (1.5 against 6.4 µs a row), and the row stays as it was written, keys in order.
macro_rules! queue_rows_sql {
    ($email:literal) => {
        concat!(
            "insert into outbox (event_id, topic, message_key, record_name, schema_version,
                                 payload, headers)
             select u.id, u.t, u.k, u.r, u.v,
                    case when u.to_customer
                         then replace(u.p::text, '\"recipient\":\"\"',
                                      '\"recipient\":' || to_json(coalesce(btrim(",
            $email,
            "), ''))::text)::json
                         else u.p end,
                    u.h"
        )
    };
}

/// What the text of an invoice's first email holds before its statement sets the
/// recipient ([`queue_rows_sql`]).
pub const EMPTY_RECIPIENT: &str = r#""recipient":"""#;
pub(crate) use queue_rows_sql;

/// Writes the invoice of `event` if its customer is in the caller's organization and
/// active, its outbox `rows` (a row marked `true` is the customer's email: its `recipient`
/// is set to the customer's address, or left empty) and, given one, the idempotency key with
/// the command's response (its JSON text), all in one statement. `false`: nothing was written (see
/// [`customer_refusal`]; or the key was used before keys had users). A key taken by a
/// request that committed meanwhile fails on its primary key, as a duplicate invoice number
/// fails on its unique key.
async fn insert_invoice_with_rows(
    conn: &mut PgConnection,
    organization_id: Uuid,
    event: &InvoiceCreated,
    rows: &[(outbox::Row, bool)],
    key: Option<(&idempotency::Recording<'_>, String)>,
) -> Result<bool, sqlx::Error> {
    let (recording, response) = key.unzip();
    let query = sqlx::query(concat!(
        "with customer as (
             select id, email from customers
              where id = $3 and organization_id = $2 and active
         ), invoice as (
             insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                                   currency, issue_date, due_date, description, period)
             select $1, $2, id, $4, $5, $6, $7, $8, $9, $10 from customer
              where not exists (select 1 from idempotency_keys
                                 where organization_id = $2 and user_id = $11
                                   and idempotency_key = $13)
             returning customer_id
         ), queued as (",
        queue_rows_sql!("customer.email"),
        "
               from invoice join customer on customer.id = invoice.customer_id,
                    unnest($17::uuid[], $18::text[], $19::text[], $20::text[], $21::int[],
                           $22::json[], $23::json[], $24::bool[]) with ordinality
                    as u(id, t, k, r, v, p, h, to_customer, n)
              order by u.n
         ), keyed as (
             insert into idempotency_keys (organization_id, user_id, idempotency_key,
                                           request_hash, response_status, response_body)
             select $2, $12, $13, $14, $15, $16::json from invoice where $13::text is not null
         )
         select 1 from invoice"
    ))
    .bind(event.invoice_id)
    .bind(organization_id)
    .bind(event.customer_id)
    .bind(&event.invoice_number)
    .bind(event.amount)
    .bind(&event.currency)
    .bind(event.issue_date)
    .bind(event.due_date)
    .bind(event.description.as_deref())
    .bind(event.period.as_deref())
    .bind(idempotency::LEGACY_USER)
    .bind(recording.map(|r| r.key.user_id))
    .bind(recording.map(|r| r.key.key.as_str()))
    .bind(recording.map(|r| r.key.request_hash.as_slice()))
    .bind(recording.map(|r| i32::from(r.status)))
    .bind(response);
    let written = outbox::bind_rows(query, rows.iter().map(|(r, _)| r))
        .bind(
            rows.iter()
                .map(|(_, to_customer)| *to_customer)
                .collect::<Vec<_>>(),
        )
        .fetch_optional(conn)
        .await?;
    Ok(written.is_some())
}

/// Whether an invoice's first email goes out with it, in the same transaction: the API's
/// and the monthly job's invoices send it; an invoice another system made (the bridge's)
/// leaves the email to that system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstEmail {
    Send,
    NotOurs,
}

/// An invoice's input with every rule checked that needs no database.
#[derive(Debug)]
pub struct CheckedInvoice {
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub due_date: NaiveDate,
    pub issue_date: NaiveDate,
    pub invoice_number: Option<String>,
    pub description: Option<String>,
    pub period: Option<String>,
}

impl CheckedInvoice {
    /// The number asked for, if one was.
    pub fn chosen_number(&self) -> Option<&str> {
        self.invoice_number
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
    }

    /// The number asked for, else one made from the invoice's id (unique as the id is).
    pub fn number(&self, invoice_id: Uuid) -> String {
        match self.chosen_number() {
            Some(n) => n.to_string(),
            None => format!("INV-{}", invoice_id.simple()),
        }
    }
}

pub fn check_invoice(input: NewInvoice) -> Result<CheckedInvoice, FieldError> {
    let customer_id = input
        .customer_id
        .ok_or_else(|| FieldError::new("customer_id", "is required"))?;
    let amount = input
        .amount
        .map(Amount::value)
        .ok_or_else(|| FieldError::new("amount", "is required"))?;
    let currency = input.currency.unwrap_or_else(|| "INR".to_string());
    check_money("amount", amount, &currency)?;
    let due_date = input
        .due_date
        .map(Day::date)
        .ok_or_else(|| FieldError::new("due_date", "is required"))?;
    let issue_date = input
        .issue_date
        .map_or_else(|| Utc::now().date_naive(), Day::date);
    if due_date < issue_date {
        return Err(FieldError::new("due_date", "must not be before issue_date"));
    }
    check_line("invoice_number", input.invoice_number.as_deref(), 64)?;
    check_lines("description", input.description.as_deref(), 500)?;
    if let Some(period) = input.period.as_deref() {
        check_period("period", period)?;
    }
    Ok(CheckedInvoice {
        customer_id,
        amount: amount.round_dp(2),
        currency,
        due_date,
        issue_date,
        invoice_number: input.invoice_number,
        description: input.description,
        period: input.period,
    })
}

/// The `InvoiceCreated` of an invoice written under `invoice_id` and `invoice_number`.
pub fn invoice_created(
    caller: &Caller,
    invoice: CheckedInvoice,
    invoice_id: Uuid,
    invoice_number: String,
) -> InvoiceCreated {
    InvoiceCreated {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        invoice_id,
        customer_id: invoice.customer_id,
        invoice_number,
        amount: invoice.amount,
        currency: invoice.currency,
        issue_date: invoice.issue_date,
        due_date: invoice.due_date,
        description: invoice.description,
        period: invoice.period,
        tax_amount: None,
    }
}

impl CreatedInvoice {
    /// The invoice's line in the log, once it is written.
    pub(crate) fn log(&self) {
        tracing::info!(invoice_id = %self.invoice_id, customer_id = %self.customer_id,
                       amount = %self.amount, event_id = %self.consistency_token,
                       "invoice created");
    }

    pub fn of(event: &InvoiceCreated) -> Self {
        CreatedInvoice {
            invoice_id: event.invoice_id,
            invoice_number: event.invoice_number.clone(),
            customer_id: event.customer_id,
            amount: event.amount,
            currency: event.currency.clone(),
            issue_date: event.issue_date,
            due_date: event.due_date,
            status: "open",
            consistency_token: event.envelope.event_id,
        }
    }
}

/// The rows of invoices whose events are `events`, in one statement.
pub async fn insert_invoices(
    conn: &mut PgConnection,
    caller: &Caller,
    events: &[InvoiceCreated],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into invoices (id, organization_id, customer_id, invoice_number, amount, currency,
                               issue_date, due_date, description, period)
         select id, $1, c, n, a, cur, i, d, descr, p
           from unnest($2::uuid[], $3::uuid[], $4::text[], $5::numeric[], $6::text[],
                       $7::date[], $8::date[], $9::text[], $10::text[])
                as u(id, c, n, a, cur, i, d, descr, p)",
    )
    .bind(caller.organization_id)
    .bind(events.iter().map(|e| e.invoice_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.customer_id).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.invoice_number.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.amount).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.issue_date).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.due_date).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.description.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.period.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// An invoice under an id the caller chose (the monthly job claims its row with it before
/// the invoice exists), in the caller's transaction, without a key: [`prepare_invoice`]
/// and [`write_prepared`].
pub async fn create_invoice_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewInvoice,
    invoice_id: Uuid,
    email: FirstEmail,
) -> Result<CreatedInvoice> {
    let invoice = prepare_invoice(caller, input, invoice_id, email)?;
    write_prepared(conn, caller.organization_id, &invoice, None).await?;
    Ok(invoice.created)
}

/// An invoice command checked and made ready to write: its event, its answer and its outbox
/// rows (a row marked `true` is the customer's email: the statement that writes it sets
/// its `recipient` to the customer's address, read by the check of the customer).
pub struct PreparedInvoice {
    pub event: InvoiceCreated,
    pub created: CreatedInvoice,
    pub rows: Vec<(outbox::Row, bool)>,
}

/// The invoice of `input` under `invoice_id`, its `InvoiceCreated` and, when `email` says
/// so, its first email ([`crate::invoice_email::first_email`]), checked and encoded; the
/// caller's role is its caller's to check. Nothing is written.
pub fn prepare_invoice(
    caller: &Caller,
    input: NewInvoice,
    invoice_id: Uuid,
    email: FirstEmail,
) -> Result<PreparedInvoice> {
    let input = check_invoice(input)?;
    let invoice_number = input.number(invoice_id);
    let event = invoice_created(caller, input, invoice_id, invoice_number);
    let created = CreatedInvoice::of(&event);
    let mut rows = vec![(outbox::row(&event)?, false)];
    if email == FirstEmail::Send {
        // The recipient is the customer's address, read by the statement that checks them.
        let command = crate::invoice_email::first_email(caller, &created, None);
        rows.push((outbox::row(&command)?, true));
    }
    Ok(PreparedInvoice {
        event,
        created,
        rows,
    })
}

/// A prepared invoice of `organization_id`, its rows and, given `key`, the key with the
/// command's response, in one statement ([`insert_invoice_with_rows`]); each refusal
/// named as the command answers it.
pub async fn write_prepared(
    conn: &mut PgConnection,
    organization_id: Uuid,
    invoice: &PreparedInvoice,
    key: Option<idempotency::Recording<'_>>,
) -> Result<()> {
    let event = &invoice.event;
    let key = match &key {
        Some(recording) => Some((recording, serde_json::to_string(&invoice.created)?)),
        None => None,
    };
    match insert_invoice_with_rows(conn, organization_id, event, &invoice.rows, key).await {
        Ok(true) => {}
        Ok(false) => return Err(customer_refusal(conn, organization_id, event.customer_id).await),
        Err(e) => return Err(write_failure(e, event)),
    }
    invoice.created.log();
    Ok(())
}

/// What a failed write of an invoice answers: a key taken meanwhile, a number taken, or
/// the database's error.
fn write_failure(e: sqlx::Error, event: &InvoiceCreated) -> Error {
    match e {
        sqlx::Error::Database(db) if db.constraint() == Some(idempotency::PRIMARY_KEY) => {
            idempotency::taken()
        }
        // An id given by the caller (the bridge passes the .NET service's on) and taken.
        sqlx::Error::Database(db) if db.constraint() == Some("invoices_pkey") => {
            Error::Conflict(format!("invoice_id {} already exists", event.invoice_id))
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict(format!(
            "invoice_number {} already exists in this organization",
            event.invoice_number
        )),
        e => e.into(),
    }
}

/// An invoice as it stands: the command side's own row, with what has been paid on it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Invoice {
    pub invoice_id: Uuid,
    pub invoice_number: String,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub description: Option<String>,
    pub period: Option<String>,
    /// `open`, `paid` or `void`.
    pub status: String,
    pub amount_paid: Decimal,
    pub void_reason: Option<String>,
    pub voided_at: Option<DateTime<Utc>>,
}

/// The invoice `id` of the caller's organization, if there is one.
pub async fn find_invoice(
    conn: &mut PgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<Invoice>> {
    let mut invoice: Option<Invoice> = sqlx::query_as(
        "select i.id as invoice_id, i.invoice_number, i.customer_id, i.amount,
                i.currency::text as currency, i.issue_date, i.due_date, i.description, i.period,
                i.status, coalesce(p.paid, 0) as amount_paid, i.void_reason, i.voided_at
           from invoices i
           left join lateral (select sum(amount) as paid from payments
                               where invoice_id = i.id) p on true
          where i.id = $1 and i.organization_id = $2",
    )
    .bind(id)
    .bind(caller.organization_id)
    .fetch_optional(conn)
    .await?;
    if let Some(invoice) = &mut invoice {
        // Postgres hands back a zero sum without decimal places.
        invoice.amount_paid.rescale(2);
    }
    Ok(invoice)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidInvoice {
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VoidedInvoice {
    #[serde(flatten)]
    pub invoice: Invoice,
    pub consistency_token: Uuid,
}

/// Voids an open invoice on which nothing has been paid; the ledger reverses its posting
/// when it reads the `InvoiceVoided`. Money already received is not undone here: a paid or
/// partly paid invoice is a conflict.
pub async fn void_invoice(
    conn: &mut PgConnection,
    caller: &Caller,
    invoice_id: Uuid,
    input: VoidInvoice,
) -> Result<VoidedInvoice> {
    caller.require(BOOKKEEPERS, "voiding an invoice")?;
    let reason = trimmed("reason", input.reason.as_deref(), 500, Breaks::Allowed)?;

    // The same row lock a manual payment takes: of a payment and a void racing for one
    // invoice, the second to get the lock sees what the first did and is refused.
    let LockedInvoice {
        customer_id,
        amount,
        currency,
        status,
        payments,
        paid,
        ..
    } = lock_invoice(conn, caller.organization_id, invoice_id)
        .await?
        .ok_or(Error::NotFound("invoice"))?;
    if status != "open" {
        return Err(Error::Conflict(format!(
            "invoice {invoice_id} has status {status}: only an open invoice can be voided"
        )));
    }
    if payments > 0 {
        return Err(Error::Conflict(format!(
            "invoice {invoice_id} has amount_paid {paid} ({payments} payment(s)): \
             a partly paid invoice cannot be voided"
        )));
    }

    sqlx::query(
        "update invoices set status = 'void', void_reason = $2, voided_at = now() where id = $1",
    )
    .bind(invoice_id)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    let event = InvoiceVoided {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        invoice_id,
        customer_id,
        // The whole amount: nothing was paid, so all of it leaves the receivable.
        amount,
        currency: currency.trim().to_string(),
        reason: reason.unwrap_or_default().to_string(),
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%invoice_id, %customer_id, %amount, event_id = %consistency_token, "invoice voided");
    let invoice = find_invoice(conn, caller, invoice_id)
        .await?
        .ok_or(Error::NotFound("invoice"))?;
    Ok(VoidedInvoice {
        invoice,
        consistency_token,
    })
}

/// An invoice locked for the rest of the transaction, with what has been paid on it. The
/// lock (`for update` on the invoice row) is the one every writer of an invoice's payments
/// or status takes: of two manual payments, a payment and a void, or the payment saga and
/// either, the second to get it sees what the first did.
#[derive(Debug, Clone)]
pub struct LockedInvoice {
    pub customer_id: Uuid,
    pub invoice_number: String,
    pub amount: Decimal,
    /// Trimmed (the column is fixed-width).
    pub currency: String,
    pub status: String,
    /// Payments recorded against it and their sum.
    pub payments: i64,
    pub paid: Decimal,
}

impl LockedInvoice {
    /// What is still to pay, to the cent.
    pub fn outstanding(&self) -> Decimal {
        (self.amount - self.paid).round_dp(2)
    }
}

/// Locks the organization's invoice and sums its payments; `None` if there is no such
/// invoice in the organization. The sum is read after the lock is held (its own statement),
/// so it includes every payment committed by whoever held the lock before.
pub async fn lock_invoice(
    conn: &mut PgConnection,
    organization_id: Uuid,
    invoice_id: Uuid,
) -> std::result::Result<Option<LockedInvoice>, sqlx::Error> {
    let row: Option<(Uuid, String, Decimal, String, String)> = sqlx::query_as(
        "select customer_id, invoice_number, amount, currency::text, status from invoices
          where id = $1 and organization_id = $2 for update",
    )
    .bind(invoice_id)
    .bind(organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((customer_id, invoice_number, amount, currency, status)) = row else {
        return Ok(None);
    };
    let (payments, paid): (i64, Decimal) = sqlx::query_as(
        "select count(*), coalesce(sum(amount), 0) from payments where invoice_id = $1",
    )
    .bind(invoice_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(LockedInvoice {
        customer_id,
        invoice_number,
        amount,
        currency: currency.trim().to_string(),
        status,
        payments,
        paid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement finds where the recipient goes by [`EMPTY_RECIPIENT`]: the email's text
    /// holds it once, even when a text of the command holds the same characters.
    #[test]
    fn an_invoices_first_email_holds_the_empty_recipient_once() {
        let caller = Caller {
            organization_id: Uuid::now_v7(),
            role: "admin".into(),
            user_id: None,
            correlation_id: EMPTY_RECIPIENT.into(),
        };
        let input: NewInvoice = serde_json::from_value(serde_json::json!({
            "customer_id": Uuid::now_v7(), "amount": "10.00", "due_date": "2026-12-31",
            "issue_date": "2026-12-01", "description": EMPTY_RECIPIENT,
        }))
        .unwrap();
        let prepared = prepare_invoice(&caller, input, Uuid::now_v7(), FirstEmail::Send).unwrap();
        let [(invoice, false), (email, true)] = &prepared.rows[..] else {
            panic!("the invoice's row, then its email's");
        };
        let email = email.payload().unwrap();
        assert_eq!(email.matches(EMPTY_RECIPIENT).count(), 1, "{email}");
        assert_eq!(
            invoice.payload().unwrap().matches(EMPTY_RECIPIENT).count(),
            0
        );
    }
}
