//! Rust types of the records the pipeline reads and writes. Their JSON form (serde) is
//! the bridge to Avro (see [`crate::json`]); field names equal the `.avsc` field names.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::{Error, Result, topics};

mod rules;

use rules::check_user;
pub use rules::{
    APPROVAL_STEPS, Breaks, FIRST_YEAR, FieldError, LAST_YEAR, USER_ROLES, check_address,
    check_approval_steps, check_currency, check_date, check_invoice_template, check_money,
    check_period, check_text, minor_units,
};

/// Fields every record carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    pub organization_id: Uuid,
    pub correlation_id: String,
    #[serde(default)]
    pub causation_id: Option<String>,
}

impl Envelope {
    /// A new envelope for an event caused by a request or by another event.
    pub fn new(organization_id: Uuid, correlation_id: &str, causation_id: Option<String>) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            // Millisecond precision is what the wire carries; truncate now so the value
            // written to the outbox equals the value a consumer reads back.
            occurred_at: DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
                .unwrap_or_else(Utc::now),
            organization_id,
            correlation_id: correlation_id.to_string(),
            causation_id,
        }
    }
}

/// A record type: its Avro full name, topic and the version this binary writes.
pub trait Record: Serialize {
    const NAME: &'static str;
    const TOPIC: &'static str;
    const WRITE_VERSION: u32 = 1;
    fn envelope(&self) -> &Envelope;
    /// Kafka key: the aggregate whose events must stay in order.
    fn key(&self) -> String;
}

/// `impl Record` for a record type: Avro full name, topic, the field that is its Kafka key
/// and, where it is not 1, the schema version this binary writes.
macro_rules! record {
    ($ty:ident, $name:literal, $topic:expr, key = $($key:ident).+ $(, version = $version:literal)?) => {
        impl Record for $ty {
            const NAME: &'static str = $name;
            const TOPIC: &'static str = $topic;
            $(const WRITE_VERSION: u32 = $version;)?
            fn envelope(&self) -> &Envelope {
                &self.envelope
            }
            fn key(&self) -> String {
                self.$($key).+.to_string()
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceCreated {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub invoice_number: String,
    pub amount: Decimal,
    pub currency: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    // v2 fields: absent in v1 records, read as their defaults.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub tax_amount: Option<Decimal>,
}

record!(
    InvoiceCreated,
    "dhanman.sales.InvoiceCreated",
    topics::INVOICES,
    key = customer_id,
    version = 2
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceVoided {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
}

record!(
    InvoiceVoided,
    "dhanman.sales.InvoiceVoided",
    topics::INVOICES,
    key = customer_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceived {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub payment_id: Uuid,
    #[serde(default)]
    pub invoice_id: Option<Uuid>,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub method: String,
    #[serde(default)]
    pub reference: Option<String>,
}

record!(
    PaymentReceived,
    "dhanman.sales.PaymentReceived",
    topics::PAYMENTS,
    key = customer_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalaryPosted {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub salary_id: Uuid,
    pub employee_id: Uuid,
    /// Pay period as YYYY-MM.
    pub period: String,
    pub amount: Decimal,
    pub currency: String,
}

record!(
    SalaryPosted,
    "dhanman.payroll.SalaryPosted",
    topics::SALARIES,
    key = employee_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub payment_id: Uuid,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
}

record!(
    PaymentFailed,
    "dhanman.sales.PaymentFailed",
    topics::PAYMENTS,
    key = customer_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoItem {
    pub description: String,
    pub quantity: i32,
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct POSubmitted {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub po_id: Uuid,
    pub vendor_id: Uuid,
    pub requester_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub items: Vec<PoItem>,
    /// Roles whose approval the order needs, e.g. `["manager", "cfo"]`.
    pub required_approvers: Vec<String>,
}

record!(
    POSubmitted,
    "dhanman.purchase.POSubmitted",
    topics::PURCHASE_ORDERS,
    key = po_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct POApproved {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub po_id: Uuid,
    pub vendor_id: Uuid,
    pub requester_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub approved_by: Vec<Uuid>,
}

record!(
    POApproved,
    "dhanman.purchase.POApproved",
    topics::PURCHASE_ORDERS,
    key = po_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PORejected {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub po_id: Uuid,
    pub vendor_id: Uuid,
    pub requester_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub rejected_by: Uuid,
    pub reason: String,
}

record!(
    PORejected,
    "dhanman.purchase.PORejected",
    topics::PURCHASE_ORDERS,
    key = po_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillCreated {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub bill_id: Uuid,
    pub vendor_id: Uuid,
    #[serde(default)]
    pub po_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    pub description: String,
    pub due_date: NaiveDate,
}

record!(
    BillCreated,
    "dhanman.purchase.BillCreated",
    topics::BILLS,
    key = vendor_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
}

record!(
    UserCreated,
    "dhanman.common.UserCreated",
    topics::USERS,
    key = user_id
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendApprovalRequest {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub po_id: Uuid,
    pub approver_role: String,
    #[serde(default)]
    pub approver_id: Option<Uuid>,
    /// Email address of the approver (or of the role's mailbox).
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
}

record!(
    SendApprovalRequest,
    "dhanman.notification.SendApprovalRequest",
    topics::NOTIFICATION_COMMANDS,
    key = recipient
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendInvoiceEmail {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    /// The customer's address when the command was issued; empty: the customer has none,
    /// and the notifier records the email as skipped.
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
    pub due_date: NaiveDate,
    // v2 field: absent in v1 records (always copies asked for later), read as `None`.
    #[serde(default)]
    pub template: Option<String>,
}

/// The invoice emails a [`SendInvoiceEmail`] may ask for (its `template`).
pub mod invoice_email {
    /// The first send, issued with the invoice.
    pub const INVOICE: &str = "invoice";
    /// A copy asked for later; what a command without a template means.
    pub const COPY: &str = "invoice_copy";
    pub const ALL: [&str; 2] = [INVOICE, COPY];
}

record!(
    SendInvoiceEmail,
    "dhanman.notification.SendInvoiceEmail",
    topics::NOTIFICATION_COMMANDS,
    key = recipient,
    version = 2
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendPaymentReceipt {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub payment_id: Uuid,
    #[serde(default)]
    pub invoice_id: Option<Uuid>,
    pub customer_id: Uuid,
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
}

record!(
    SendPaymentReceipt,
    "dhanman.notification.SendPaymentReceipt",
    topics::NOTIFICATION_COMMANDS,
    key = recipient
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendPaymentReminder {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
    pub due_date: NaiveDate,
}

record!(
    SendPaymentReminder,
    "dhanman.notification.SendPaymentReminder",
    topics::NOTIFICATION_COMMANDS,
    key = recipient
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostingLine {
    pub account_code: String,
    pub party_type: Option<String>,
    pub party_id: Option<Uuid>,
    pub debit: Decimal,
    pub credit: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntryPosted {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub entry_id: Uuid,
    pub source_event_id: Uuid,
    pub reference_type: String,
    pub reference_id: Uuid,
    pub description: String,
    pub currency: String,
    pub lines: Vec<PostingLine>,
}

record!(
    LedgerEntryPosted,
    "dhanman.ledger.LedgerEntryPosted",
    topics::LEDGER_ENTRIES,
    key = envelope.organization_id
);

/// A decoded record of any known type. Types no processor reads yet keep their JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    InvoiceCreated(InvoiceCreated),
    InvoiceVoided(InvoiceVoided),
    PaymentReceived(PaymentReceived),
    SalaryPosted(SalaryPosted),
    PaymentFailed(PaymentFailed),
    POSubmitted(POSubmitted),
    POApproved(POApproved),
    PORejected(PORejected),
    BillCreated(BillCreated),
    UserCreated(UserCreated),
    SendApprovalRequest(SendApprovalRequest),
    SendInvoiceEmail(SendInvoiceEmail),
    SendPaymentReceipt(SendPaymentReceipt),
    SendPaymentReminder(SendPaymentReminder),
    LedgerEntryPosted(LedgerEntryPosted),
    Other {
        name: String,
        envelope: Envelope,
        json: Json,
    },
}

/// A record in a form serde can read a Rust type from: its JSON, or its Avro value.
trait Form {
    fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T>;
    /// The JSON form, which a record of a type no processor reads keeps.
    fn into_json(self) -> Result<Json>;
}

impl Form for Json {
    fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        serde_json::from_value(self).map_err(|e| Error::Invalid(e.to_string()))
    }

    fn into_json(self) -> Result<Json> {
        Ok(self)
    }
}

/// An Avro value and the schema it was resolved to.
struct Avro<'a>(&'a apache_avro::types::Value, &'a apache_avro::Schema);

impl Form for Avro<'_> {
    fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        crate::typed::from_avro(self.0, self.1)
    }

    fn into_json(self) -> Result<Json> {
        crate::json::from_avro(self.0, self.1, "").map_err(|e| match e {
            Error::Invalid(message) => Error::Undecodable(message),
            other => other,
        })
    }
}

/// An Avro datum and the schema it was written with, which is the one it is read with.
struct Datum<'a>(&'a [u8], &'a apache_avro::Schema);

impl Form for Datum<'_> {
    fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        crate::typed::from_datum(self.0, self.1)
    }

    fn into_json(self) -> Result<Json> {
        let mut bytes = self.0;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(self.1)
            .build()
            .and_then(|reader| reader.read_value(&mut bytes))
            .map_err(|e| Error::Undecodable(e.to_string()))?;
        Avro(&value, self.1).into_json()
    }
}

impl Event {
    /// Typed view of a record's JSON form, validated.
    pub fn from_json(name: &str, json: Json) -> Result<Event> {
        Event::from_form(name, json)
    }

    /// Typed view of a record's Avro value, resolved to `schema`, validated: as
    /// [`Event::from_json`] of its JSON form ([`crate::json::from_avro`]). A value its
    /// schema does not describe is [`Error::Undecodable`]; one its type refuses,
    /// [`Error::Invalid`].
    pub fn from_avro(
        name: &str,
        value: &apache_avro::types::Value,
        schema: &apache_avro::Schema,
    ) -> Result<Event> {
        Event::from_form(name, Avro(value, schema))
    }

    /// Typed view of a record's Avro datum, written with `schema` (which
    /// [`crate::typed::readable`] accepts) and read with it, validated: as
    /// [`Event::from_avro`] of the value apache-avro decodes from it.
    pub fn from_datum(name: &str, datum: &[u8], schema: &apache_avro::Schema) -> Result<Event> {
        Event::from_form(name, Datum(datum, schema))
    }

    fn from_form(name: &str, form: impl Form) -> Result<Event> {
        let event = match name {
            InvoiceCreated::NAME => Event::InvoiceCreated(form.parse()?),
            InvoiceVoided::NAME => Event::InvoiceVoided(form.parse()?),
            PaymentReceived::NAME => Event::PaymentReceived(form.parse()?),
            SalaryPosted::NAME => Event::SalaryPosted(form.parse()?),
            PaymentFailed::NAME => Event::PaymentFailed(form.parse()?),
            POSubmitted::NAME => Event::POSubmitted(form.parse()?),
            POApproved::NAME => Event::POApproved(form.parse()?),
            PORejected::NAME => Event::PORejected(form.parse()?),
            BillCreated::NAME => Event::BillCreated(form.parse()?),
            UserCreated::NAME => Event::UserCreated(form.parse()?),
            SendApprovalRequest::NAME => Event::SendApprovalRequest(form.parse()?),
            SendInvoiceEmail::NAME => Event::SendInvoiceEmail(form.parse()?),
            SendPaymentReceipt::NAME => Event::SendPaymentReceipt(form.parse()?),
            SendPaymentReminder::NAME => Event::SendPaymentReminder(form.parse()?),
            LedgerEntryPosted::NAME => Event::LedgerEntryPosted(form.parse()?),
            _ => {
                let json = form.into_json()?;
                Event::Other {
                    name: name.to_string(),
                    envelope: json.clone().parse()?,
                    json,
                }
            }
        };
        event.validate()?;
        Ok(event)
    }

    pub fn envelope(&self) -> &Envelope {
        match self {
            Event::InvoiceCreated(e) => &e.envelope,
            Event::InvoiceVoided(e) => &e.envelope,
            Event::PaymentReceived(e) => &e.envelope,
            Event::SalaryPosted(e) => &e.envelope,
            Event::PaymentFailed(e) => &e.envelope,
            Event::POSubmitted(e) => &e.envelope,
            Event::POApproved(e) => &e.envelope,
            Event::PORejected(e) => &e.envelope,
            Event::BillCreated(e) => &e.envelope,
            Event::UserCreated(e) => &e.envelope,
            Event::SendApprovalRequest(e) => &e.envelope,
            Event::SendInvoiceEmail(e) => &e.envelope,
            Event::SendPaymentReceipt(e) => &e.envelope,
            Event::SendPaymentReminder(e) => &e.envelope,
            Event::LedgerEntryPosted(e) => &e.envelope,
            Event::Other { envelope, .. } => envelope,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Event::InvoiceCreated(_) => InvoiceCreated::NAME,
            Event::InvoiceVoided(_) => InvoiceVoided::NAME,
            Event::PaymentReceived(_) => PaymentReceived::NAME,
            Event::SalaryPosted(_) => SalaryPosted::NAME,
            Event::PaymentFailed(_) => PaymentFailed::NAME,
            Event::POSubmitted(_) => POSubmitted::NAME,
            Event::POApproved(_) => POApproved::NAME,
            Event::PORejected(_) => PORejected::NAME,
            Event::BillCreated(_) => BillCreated::NAME,
            Event::UserCreated(_) => UserCreated::NAME,
            Event::SendApprovalRequest(_) => SendApprovalRequest::NAME,
            Event::SendInvoiceEmail(_) => SendInvoiceEmail::NAME,
            Event::SendPaymentReceipt(_) => SendPaymentReceipt::NAME,
            Event::SendPaymentReminder(_) => SendPaymentReminder::NAME,
            Event::LedgerEntryPosted(_) => LedgerEntryPosted::NAME,
            Event::Other { name, .. } => name,
        }
    }

    /// Business rules a record must meet before any processor acts on it; a record that
    /// fails them is poison, whatever its schema says.
    pub fn validate(&self) -> Result<()> {
        // The nil id is no event's: a second event carrying it would be taken for the first
        // by every processor's gate, and skipped without a word.
        let envelope = self.envelope();
        for (field, id) in [
            ("event_id", envelope.event_id),
            ("organization_id", envelope.organization_id),
        ] {
            if id.is_nil() {
                return Err(FieldError::new(field, "must not be the nil UUID").into());
            }
        }
        match self {
            Event::InvoiceCreated(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_date("issue_date", e.issue_date)?;
                check_date("due_date", e.due_date)?;
                if e.due_date < e.issue_date {
                    return Err(Error::Invalid("due_date: is before issue_date".into()));
                }
            }
            Event::InvoiceVoided(e) => check_money("amount", e.amount, &e.currency)?,
            Event::PaymentReceived(e) => check_money("amount", e.amount, &e.currency)?,
            Event::SalaryPosted(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_period("period", &e.period)?;
            }
            Event::PaymentFailed(e) => check_money("amount", e.amount, &e.currency)?,
            Event::POSubmitted(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_approval_steps("required_approvers", &e.required_approvers)?;
            }
            Event::POApproved(e) => check_money("amount", e.amount, &e.currency)?,
            Event::PORejected(e) => check_money("amount", e.amount, &e.currency)?,
            Event::BillCreated(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_date("due_date", e.due_date)?;
            }
            Event::SendApprovalRequest(e) => check_money("amount", e.amount, &e.currency)?,
            Event::SendInvoiceEmail(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_date("due_date", e.due_date)?;
                if let Some(t) = e.template.as_deref() {
                    check_invoice_template("template", t)?;
                }
            }
            Event::SendPaymentReceipt(e) => check_money("amount", e.amount, &e.currency)?,
            Event::SendPaymentReminder(e) => {
                check_money("amount", e.amount, &e.currency)?;
                check_date("due_date", e.due_date)?;
            }
            Event::UserCreated(e) => check_user(e)?,
            Event::LedgerEntryPosted(_) | Event::Other { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
