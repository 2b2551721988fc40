//! The .NET services' messages as they are on RabbitMQ (JSON with the C# property names)
//! and our commands and events: inbound, each message becomes the input of the command the
//! API runs for the same thing; outbound, each of our events becomes the JSON its .NET
//! consumers read.
//!
//! Inbound is a tolerant reader of a strict shape: properties it does not know are
//! ignored (a .NET base class may add `Id` or `OccurredOn`), PascalCase and camelCase are
//! both read, but every property it needs must be there with its type. Amounts are exact:
//! a JSON number is read from its text (never through a float), and so is a decimal written
//! as a string. Rules of the books (positive amounts, two decimal places, dates the books
//! hold, known customers) are the commands' own and are checked there.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use dhanman_producers::input::{Amount, Day, exact_decimal, strict_date};
use dhanman_producers::purchase::{NewBill, NewItem, NewPurchaseOrder};
use dhanman_producers::sales::{NewInvoice, NewManualPayment};
use dhanman_producers::{payroll::NewSalary, users::NewUser};
use dhanman_schemas::Event;
use dhanman_schemas::events::invoice_email;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Largest message body read; a larger one is dead-lettered unread.
pub const MAX_BODY: usize = 64 * 1024;

/// The message types the bridge maps inbound, by their C# class name.
pub const INBOUND_TYPES: &[&str] = &[
    "InvoiceCreatedEvent",
    "PaymentReceivedEvent",
    "BillCreatedEvent",
    "POSubmittedEvent",
    "POApprovedEvent",
    "SalaryPostedEvent",
    "UserCreatedEvent",
    "SendInvoiceEmailCommand",
];

/// A message mapped to the command it runs; the ids are the .NET side's, kept.
#[derive(Debug, Clone)]
pub enum Inbound {
    InvoiceCreated {
        invoice_id: Uuid,
        input: NewInvoice,
    },
    PaymentReceived {
        payment_id: Uuid,
        input: NewManualPayment,
    },
    BillCreated {
        bill_id: Uuid,
        input: NewBill,
    },
    POSubmitted {
        po_id: Uuid,
        requested_by: Uuid,
        input: NewPurchaseOrder,
    },
    POApproved {
        po_id: Uuid,
        approved_by: Uuid,
        comment: Option<String>,
    },
    SalaryPosted {
        salary_id: Uuid,
        input: NewSalary,
    },
    UserCreated {
        user_id: Uuid,
        input: NewUser,
    },
    SendInvoiceEmail {
        invoice_id: Uuid,
        customer_id: Uuid,
        /// Ours: `invoice` or `invoice_copy`.
        template: &'static str,
    },
}

/// Why a message maps to nothing: its dead letter's class and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    /// `unknown-type`, `malformed` (not the JSON of its type) or `too-large`.
    pub class: &'static str,
    pub reason: String,
}

impl Unmappable {
    fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Unmappable {
            class,
            reason: reason.into(),
        }
    }
}

/// The class name of a message: the AMQP `type` property, else the `$type`,
/// `MessageType` or `EventType` property of its body. Namespaces, assembly names and
/// MassTransit's `urn:message:` form are stripped
/// (`Dhanman.Sales.Events.InvoiceCreatedEvent, Dhanman.Sales` is `InvoiceCreatedEvent`).
pub fn type_name(amqp_type: Option<&str>, body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "$type")]
        dollar_type: Option<String>,
        #[serde(rename = "MessageType", alias = "messageType")]
        message_type: Option<String>,
        #[serde(rename = "EventType", alias = "eventType")]
        event_type: Option<String>,
    }
    let named = match amqp_type.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => {
            let probe: Probe = serde_json::from_slice(body).ok()?;
            probe
                .dollar_type
                .or(probe.message_type)
                .or(probe.event_type)?
        }
    };
    let without_assembly = named.split(',').next().unwrap_or_default();
    let class = without_assembly
        .rsplit(['.', '+', ':'])
        .next()
        .unwrap_or_default()
        .trim();
    (!class.is_empty() && class.len() <= 128).then(|| class.to_string())
}

/// Maps a message of C# type `type_name` to its command.
pub fn parse(type_name: &str, body: &[u8]) -> Result<Inbound, Unmappable> {
    if body.len() > MAX_BODY {
        return Err(Unmappable::new(
            "too-large",
            format!(
                "the body has {} bytes; at most {MAX_BODY} are read",
                body.len()
            ),
        ));
    }
    let inbound = match type_name {
        "InvoiceCreatedEvent" => {
            let e: InvoiceCreatedEvent = read(type_name, body)?;
            Inbound::InvoiceCreated {
                invoice_id: e.invoice_id.0,
                input: NewInvoice {
                    customer_id: Some(e.customer_id.0),
                    amount: Some(Amount(e.amount.0)),
                    currency: e.currency,
                    due_date: Some(Day(e.due_date.0)),
                    issue_date: Some(Day(e.created_at.0)),
                    invoice_number: e.invoice_number,
                    description: e.description,
                    period: e.period,
                },
            }
        }
        "PaymentReceivedEvent" => {
            let e: PaymentReceivedEvent = read(type_name, body)?;
            Inbound::PaymentReceived {
                payment_id: e.payment_id.0,
                input: NewManualPayment {
                    customer_id: e.customer_id.map(|c| c.0),
                    invoice_id: e.invoice_id.map(|i| i.0),
                    amount: Some(Amount(e.amount.0)),
                    currency: e.currency,
                    method: e.payment_method,
                    reference: e.reference,
                },
            }
        }
        "BillCreatedEvent" => {
            let e: BillCreatedEvent = read(type_name, body)?;
            Inbound::BillCreated {
                bill_id: e.bill_id.0,
                input: NewBill {
                    vendor_id: Some(e.vendor_id.0),
                    po_id: e.purchase_order_id.map(|p| p.0),
                    amount: Some(Amount(e.amount.0)),
                    currency: e.currency,
                    description: Some(e.description),
                    due_date: Some(Day(e.due_date.0)),
                },
            }
        }
        "POSubmittedEvent" => {
            let e: POSubmittedEvent = read(type_name, body)?;
            Inbound::POSubmitted {
                po_id: e.purchase_order_id.0,
                requested_by: e.requested_by.0,
                input: NewPurchaseOrder {
                    vendor_id: Some(e.vendor_id.0),
                    vendor_name: Some(e.vendor_name),
                    currency: e.currency,
                    items: Some(
                        e.items
                            .into_iter()
                            .map(|i| NewItem {
                                description: Some(i.description),
                                quantity: Some(i.quantity),
                                unit_price: Some(Amount(i.unit_price.0)),
                            })
                            .collect(),
                    ),
                },
            }
        }
        "POApprovedEvent" => {
            let e: POApprovedEvent = read(type_name, body)?;
            Inbound::POApproved {
                po_id: e.purchase_order_id.0,
                approved_by: e.approved_by.0,
                comment: e.comment,
            }
        }
        "SalaryPostedEvent" => {
            let e: SalaryPostedEvent = read(type_name, body)?;
            Inbound::SalaryPosted {
                salary_id: e.salary_id.0,
                input: NewSalary {
                    employee_id: Some(e.employee_id.0),
                    employee_name: Some(e.employee_name),
                    period: Some(e.period),
                    amount: Some(Amount(e.amount.0)),
                    currency: e.currency,
                    employee_email: e.employee_email,
                },
            }
        }
        "UserCreatedEvent" => {
            let e: UserCreatedEvent = read(type_name, body)?;
            Inbound::UserCreated {
                user_id: e.user_id.0,
                input: NewUser {
                    email: Some(e.email),
                    name: Some(e.name),
                    // .NET roles are PascalCase or upper case (`Manager`, `CFO`).
                    role: Some(e.role.to_ascii_lowercase()),
                },
            }
        }
        "SendInvoiceEmailCommand" => {
            let c: SendInvoiceEmailCommand = read(type_name, body)?;
            let template: String = c
                .email_template
                .chars()
                .filter(|ch| ch.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            let template = match template.as_str() {
                "invoice" | "invoiceemail" => invoice_email::INVOICE,
                "invoicecopy" | "invoicecopyemail" => invoice_email::COPY,
                _ => {
                    return Err(Unmappable::new(
                        "malformed",
                        format!(
                            "EmailTemplate: {:?} is not a template of this pipeline; known: \
                             Invoice, InvoiceCopy",
                            c.email_template.chars().take(64).collect::<String>()
                        ),
                    ));
                }
            };
            Inbound::SendInvoiceEmail {
                invoice_id: c.invoice_id.0,
                customer_id: c.customer_id.0,
                template,
            }
        }
        other => {
            return Err(Unmappable::new(
                "unknown-type",
                format!(
                    "message type {other:?} is not one the bridge maps; known: {}",
                    INBOUND_TYPES.join(", ")
                ),
            ));
        }
    };
    Ok(inbound)
}

/// The body as `T`, naming the property that is wrong.
fn read<T: serde::de::DeserializeOwned>(type_name: &str, body: &[u8]) -> Result<T, Unmappable> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        Unmappable::new("malformed", format!("{type_name}: {at}{inner}"))
    })?;
    deserializer
        .end()
        .map_err(|e| Unmappable::new("malformed", format!("{type_name}: {e}")))?;
    Ok(value)
}

/// A C# `Guid` (never `Guid.Empty`).
#[derive(Debug, Clone, Copy)]
struct Guid(Uuid);

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let id = Uuid::try_parse(raw.trim_matches(|c| c == '{' || c == '}'))
            .map_err(|_| de::Error::custom("must be a Guid"))?;
        if id.is_nil() {
            return Err(de::Error::custom("must not be the empty Guid"));
        }
        Ok(Guid(id))
    }
}

/// A C# `decimal`: a JSON number (as System.Text.Json and Json.NET write it) or a string,
/// read exactly from its text.
#[derive(Debug, Clone, Copy)]
struct Money(Decimal);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        let text = raw.get();
        let digits = if text.starts_with('"') {
            serde_json::from_str::<String>(text).map_err(de::Error::custom)?
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            text.to_string()
        } else {
            return Err(de::Error::custom("must be a decimal number"));
        };
        exact_decimal(&digits)
            .map(Money)
            .map_err(|e| de::Error::custom(e.replace("written as a string, ", "")))
    }
}

/// A C# `DateTime`, `DateTimeOffset` or `DateOnly`: its calendar date as written
/// (`2026-12-10`, `2026-12-10T00:00:00`, `2026-12-10T09:30:00.1234567+05:30`).
#[derive(Debug, Clone, Copy)]
struct CsDate(NaiveDate);

impl<'de> Deserialize<'de> for CsDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        cs_date(&raw).map(CsDate).map_err(de::Error::custom)
    }
}

fn cs_date(raw: &str) -> Result<NaiveDate, String> {
    const SHAPE: &str = "must be a date (YYYY-MM-DD) or a date and time (ISO 8601)";
    if raw.len() > 40 {
        return Err(SHAPE.into());
    }
    // The first ten bytes are the date only when they are ten characters: a multi-byte
    // character there is no date (and no place to split).
    let Some((date, time)) = raw.split_at_checked(raw.len().min(10)) else {
        return Err(SHAPE.into());
    };
    let day = strict_date(date)?;
    if time.is_empty() {
        return Ok(day);
    }
    let time_ok = DateTime::parse_from_rfc3339(raw).is_ok()
        || NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f").is_ok();
    if time_ok { Ok(day) } else { Err(SHAPE.into()) }
}

#[derive(Deserialize)]
struct InvoiceCreatedEvent {
    #[serde(rename = "InvoiceId", alias = "invoiceId")]
    invoice_id: Guid,
    #[serde(rename = "CustomerId", alias = "customerId")]
    customer_id: Guid,
    #[serde(rename = "Amount", alias = "amount")]
    amount: Money,
    #[serde(rename = "DueDate", alias = "dueDate")]
    due_date: CsDate,
    #[serde(rename = "CreatedAt", alias = "createdAt")]
    created_at: CsDate,
    #[serde(default, rename = "Currency", alias = "currency")]
    currency: Option<String>,
    #[serde(default, rename = "InvoiceNumber", alias = "invoiceNumber")]
    invoice_number: Option<String>,
    #[serde(default, rename = "Description", alias = "description")]
    description: Option<String>,
    #[serde(default, rename = "Period", alias = "period")]
    period: Option<String>,
}

#[derive(Deserialize)]
struct PaymentReceivedEvent {
    #[serde(rename = "PaymentId", alias = "paymentId")]
    payment_id: Guid,
    #[serde(default, rename = "InvoiceId", alias = "invoiceId")]
    invoice_id: Option<Guid>,
    #[serde(default, rename = "CustomerId", alias = "customerId")]
    customer_id: Option<Guid>,
    #[serde(rename = "Amount", alias = "amount")]
    amount: Money,
    #[serde(default, rename = "Currency", alias = "currency")]
    currency: Option<String>,
    #[serde(default, rename = "PaymentMethod", alias = "paymentMethod")]
    payment_method: Option<String>,
    #[serde(default, rename = "Reference", alias = "reference")]
    reference: Option<String>,
}

#[derive(Deserialize)]
struct BillCreatedEvent {
    #[serde(rename = "BillId", alias = "billId")]
    bill_id: Guid,
    #[serde(rename = "VendorId", alias = "vendorId")]
    vendor_id: Guid,
    #[serde(default, rename = "PurchaseOrderId", alias = "purchaseOrderId")]
    purchase_order_id: Option<Guid>,
    #[serde(rename = "Amount", alias = "amount")]
    amount: Money,
    #[serde(default, rename = "Currency", alias = "currency")]
    currency: Option<String>,
    #[serde(rename = "Description", alias = "description")]
    description: String,
    #[serde(rename = "DueDate", alias = "dueDate")]
    due_date: CsDate,
}

#[derive(Deserialize)]
struct POItem {
    #[serde(rename = "Description", alias = "description")]
    description: String,
    #[serde(rename = "Quantity", alias = "quantity")]
    quantity: i32,
    #[serde(rename = "UnitPrice", alias = "unitPrice")]
    unit_price: Money,
}

#[derive(Deserialize)]
struct POSubmittedEvent {
    #[serde(rename = "PurchaseOrderId", alias = "purchaseOrderId")]
    purchase_order_id: Guid,
    #[serde(rename = "VendorId", alias = "vendorId")]
    vendor_id: Guid,
    #[serde(rename = "VendorName", alias = "vendorName")]
    vendor_name: String,
    #[serde(rename = "RequestedBy", alias = "requestedBy")]
    requested_by: Guid,
    #[serde(default, rename = "Currency", alias = "currency")]
    currency: Option<String>,
    #[serde(rename = "Items", alias = "items")]
    items: Vec<POItem>,
}

#[derive(Deserialize)]
struct POApprovedEvent {
    #[serde(rename = "PurchaseOrderId", alias = "purchaseOrderId")]
    purchase_order_id: Guid,
    #[serde(rename = "ApprovedBy", alias = "approvedBy")]
    approved_by: Guid,
    #[serde(default, rename = "Comment", alias = "comment")]
    comment: Option<String>,
}

#[derive(Deserialize)]
struct SalaryPostedEvent {
    #[serde(rename = "SalaryId", alias = "salaryId")]
    salary_id: Guid,
    #[serde(rename = "EmployeeId", alias = "employeeId")]
    employee_id: Guid,
    #[serde(rename = "EmployeeName", alias = "employeeName")]
    employee_name: String,
    #[serde(rename = "Period", alias = "period")]
    period: String,
    #[serde(rename = "Amount", alias = "amount")]
    amount: Money,
    #[serde(default, rename = "Currency", alias = "currency")]
    currency: Option<String>,
    #[serde(default, rename = "EmployeeEmail", alias = "employeeEmail")]
    employee_email: Option<String>,
}

#[derive(Deserialize)]
struct UserCreatedEvent {
    #[serde(rename = "UserId", alias = "userId")]
    user_id: Guid,
    #[serde(rename = "Email", alias = "email")]
    email: String,
    #[serde(rename = "Name", alias = "name")]
    name: String,
    #[serde(rename = "Role", alias = "role")]
    role: String,
}

#[derive(Deserialize)]
struct SendInvoiceEmailCommand {
    #[serde(rename = "InvoiceId", alias = "invoiceId")]
    invoice_id: Guid,
    #[serde(rename = "CustomerId", alias = "customerId")]
    customer_id: Guid,
    #[serde(rename = "EmailTemplate", alias = "emailTemplate")]
    email_template: String,
}

/// One of our events as its .NET consumers read it: the C# class name (the AMQP `type`)
/// and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub type_name: &'static str,
    pub body: String,
}

/// A decimal written as a JSON number with its exact digits (`3500.00`), as .NET writes one.
struct Number(Decimal);

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A date as .NET writes a `DateTime` at midnight.
fn midnight(date: NaiveDate) -> String {
    format!("{}T00:00:00", date.format("%Y-%m-%d"))
}

/// The .NET form of one of our events; `None` for records the .NET services have no type
/// for (voids, failures, rejections, commands, ledger entries). Serialized straight to text:
/// amounts keep their digits.
pub fn outbound(event: &Event) -> Option<Outbound> {
    let envelope = event.envelope();
    let org = envelope.organization_id;
    let at = instant(envelope.occurred_at);
    let (type_name, body) = match event {
        Event::InvoiceCreated(e) => (
            "InvoiceCreatedEvent",
            serde_json::to_string(&OutInvoice {
                invoice_id: e.invoice_id,
                customer_id: e.customer_id,
                amount: Number(e.amount),
                due_date: midnight(e.due_date),
                created_at: at,
                issue_date: midnight(e.issue_date),
                invoice_number: &e.invoice_number,
                currency: &e.currency,
                description: e.description.as_deref(),
                period: e.period.as_deref(),
                organization_id: org,
            }),
        ),
        Event::PaymentReceived(e) => (
            "PaymentReceivedEvent",
            serde_json::to_string(&OutPayment {
                payment_id: e.payment_id,
                invoice_id: e.invoice_id,
                customer_id: e.customer_id,
                amount: Number(e.amount),
                currency: &e.currency,
                payment_method: &e.method,
                reference: e.reference.as_deref(),
                received_at: at,
                organization_id: org,
            }),
        ),
        Event::BillCreated(e) => (
            "BillCreatedEvent",
            serde_json::to_string(&OutBill {
                bill_id: e.bill_id,
                vendor_id: e.vendor_id,
                purchase_order_id: e.po_id,
                amount: Number(e.amount),
                currency: &e.currency,
                description: &e.description,
                due_date: midnight(e.due_date),
                created_at: at,
                organization_id: org,
            }),
        ),
        Event::POSubmitted(e) => (
            "POSubmittedEvent",
            serde_json::to_string(&OutOrder {
                purchase_order_id: e.po_id,
                vendor_id: e.vendor_id,
                requested_by: e.requester_id,
                amount: Number(e.amount),
                currency: &e.currency,
                items: e
                    .items
                    .iter()
                    .map(|i| OutItem {
                        description: &i.description,
                        quantity: i.quantity,
                        unit_price: Number(i.unit_price),
                    })
                    .collect(),
                required_approvals: &e.required_approvers,
                submitted_at: at,
                organization_id: org,
            }),
        ),
        Event::POApproved(e) => (
            "POApprovedEvent",
            serde_json::to_string(&OutApproval {
                purchase_order_id: e.po_id,
                vendor_id: e.vendor_id,
                requested_by: e.requester_id,
                amount: Number(e.amount),
                currency: &e.currency,
                approved_by: e.approved_by.last().copied(),
                approvers: &e.approved_by,
                approved_at: at,
                organization_id: org,
            }),
        ),
        Event::SalaryPosted(e) => (
            "SalaryPostedEvent",
            serde_json::to_string(&OutSalary {
                salary_id: e.salary_id,
                employee_id: e.employee_id,
                period: &e.period,
                amount: Number(e.amount),
                currency: &e.currency,
                posted_at: at,
                organization_id: org,
            }),
        ),
        Event::UserCreated(e) => (
            "UserCreatedEvent",
            serde_json::to_string(&OutUser {
                user_id: e.user_id,
                email: &e.email,
                name: &e.name,
                role: &e.role,
                created_at: at,
                organization_id: org,
            }),
        ),
        _ => return None,
    };
    Some(Outbound {
        type_name,
        body: body.ok()?,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutInvoice<'a> {
    invoice_id: Uuid,
    customer_id: Uuid,
    amount: Number,
    due_date: String,
    created_at: String,
    issue_date: String,
    invoice_number: &'a str,
    currency: &'a str,
    description: Option<&'a str>,
    period: Option<&'a str>,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutPayment<'a> {
    payment_id: Uuid,
    invoice_id: Option<Uuid>,
    customer_id: Uuid,
    amount: Number,
    currency: &'a str,
    payment_method: &'a str,
    reference: Option<&'a str>,
    received_at: String,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutBill<'a> {
    bill_id: Uuid,
    vendor_id: Uuid,
    purchase_order_id: Option<Uuid>,
    amount: Number,
    currency: &'a str,
    description: &'a str,
    due_date: String,
    created_at: String,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutItem<'a> {
    description: &'a str,
    quantity: i32,
    unit_price: Number,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutOrder<'a> {
    purchase_order_id: Uuid,
    vendor_id: Uuid,
    requested_by: Uuid,
    amount: Number,
    currency: &'a str,
    items: Vec<OutItem<'a>>,
    required_approvals: &'a [String],
    submitted_at: String,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutApproval<'a> {
    purchase_order_id: Uuid,
    vendor_id: Uuid,
    requested_by: Uuid,
    amount: Number,
    currency: &'a str,
    /// The last approval's user, as the .NET event names one approver.
    approved_by: Option<Uuid>,
    approvers: &'a [Uuid],
    approved_at: String,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutSalary<'a> {
    salary_id: Uuid,
    employee_id: Uuid,
    period: &'a str,
    amount: Number,
    currency: &'a str,
    posted_at: String,
    organization_id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutUser<'a> {
    user_id: Uuid,
    email: &'a str,
    name: &'a str,
    role: &'a str,
    created_at: String,
    organization_id: Uuid,
}

#[cfg(test)]
mod tests;
