//! Notifier: decides who is told what about each event and command that concerns people,
//! renders the message, and writes it to the delivery log (`notification_deliveries`) in
//! the batch's transaction. Nothing is sent here: the sender loop ([`sender`]) claims due
//! rows and talks SMTP outside any batch transaction, so a slow or absent mail server
//! never holds a batch open, and a batch that rolls back leaves no email behind.
//!
//! One row per (event, recipient, template) — its primary key — and every event the
//! notifier acts on writes one: the rows are its exactly-once gate, as the journal is the
//! ledger's ([`Processor::gated_by_effects`]). A batch first looks for rows of its events
//! and plans only for those with none, so a redelivered record or a replay of every topic
//! adds nothing, even if a customer's address changed since; the insert's `on conflict do
//! nothing` keeps a row from being written twice by two members racing over a rebalance.
//!
//! | record | template | recipient |
//! |---|---|---|
//! | `SendInvoiceEmail` (issued with each invoice, and for each copy asked for) | invoice | the address the command names; empty: the customer's (`customers.email`) |
//! | `PaymentReceived`, `SendPaymentReceipt` (a copy: `POST /v1/payments/{id}/receipt`) | receipt | the customer; the command names its own |
//! | `SendPaymentReminder` | reminder | the command's recipient |
//! | `SendApprovalRequest` | approval_request | the approver the command names |
//! | `POApproved`, `PORejected` | po_decided | the requester (users projection) |
//! | `SalaryPosted` | payslip | `salaries.employee_email`, else the employee as a user |
//! | `UserCreated` | welcome (with the invitation token, if the user has one) | the new user |
//!
//! A welcome's invitation token is not in `UserCreated`: it is read from the short-lived
//! `invitation_emails` row the command side wrote with the user, and it leaves the database
//! (row deleted, copy in the rendered bodies blanked) in the transaction that records the
//! email as sent or dead-lettered (a trigger of `notification_deliveries`), or in the
//! invitation's acceptance if the invited person was quicker than that record.
//!
//! `POSubmitted` itself sends nothing: the approvals processor turns it into one
//! `SendApprovalRequest` per approver, and each of those is emailed. A party without an
//! address gets a `skipped` row with the reason, and nothing is sent.

mod lookups;
pub mod sender;
pub mod templates;

use chrono::{DateTime, Utc};
use dhanman_schemas::events::{Envelope, invoice_email};
use dhanman_schemas::{Event, topics};
use rust_decimal::Decimal;
use serde_json::{Value as Json, json};
use sqlx::PgConnection;
use uuid::Uuid;

use self::lookups::{Lookups, person, purchase_order};
use crate::runtime::{Applied, ApplyError, Processor};
pub use templates::{Template, Templates, format_money};

/// Name of the processor (its consumer group is `dhanman.notifier`).
pub const NAME: &str = "notifier";

/// The Postgres channel the processor notifies when it adds rows to send.
pub const CHANNEL: &str = "dhanman_notifications";

#[derive(Debug, Clone, Default)]
pub struct Notifier {
    templates: Templates,
}

impl Notifier {
    pub fn new(templates: Templates) -> Self {
        Notifier { templates }
    }
}

/// Whom one message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recipient {
    Address(String),
    /// The party (`customer:<id>`) has no address; the row is skipped with `reason`.
    Missing {
        party: String,
        reason: String,
    },
}

/// One message the notifier decided on, before rendering.
struct Planned {
    template: Template,
    recipient: Recipient,
    context: Json,
}

impl Processor for Notifier {
    fn name(&self) -> &str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        [
            topics::INVOICES,
            topics::PAYMENTS,
            topics::PURCHASE_ORDERS,
            topics::SALARIES,
            topics::USERS,
            topics::NOTIFICATION_COMMANDS,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Its reads take no consistency token: an event it sends nothing for needs no gate.
    fn ignores(&self, event: &Event) -> bool {
        tells_no_one(event)
    }

    /// Every other event writes one delivery row keyed by its id ([`plan`] has one message
    /// for each), which `applied_events` shows as the event applied.
    fn gated_by_effects(&self, event: &Event) -> bool {
        !tells_no_one(event)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        let logged = logged_among(conn, events).await?;
        let fresh: Vec<&Event> = events
            .iter()
            .filter(|e| !logged.contains(&e.envelope().event_id))
            .copied()
            .collect();
        if fresh.len() < events.len() {
            tracing::debug!(
                events = events.len() - fresh.len(),
                "events with deliveries logged before: not planned again"
            );
        }
        let mut lookups = Lookups::of_batch(conn, &fresh).await?;
        let mut deliveries = Vec::new();
        for event in &fresh {
            for p in plan(conn, &mut lookups, event).await? {
                deliveries.extend(render(&self.templates, event, p));
            }
        }
        let inserted = insert(conn, &deliveries).await?;
        let mut to_send = 0;
        for (delivery, new) in deliveries.into_iter().zip(inserted) {
            if after_insert(conn, delivery, new).await? {
                to_send += 1;
            }
        }
        if to_send > 0 {
            // Delivered at commit: the sender wakes without waiting for its next poll.
            sqlx::query("select pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await?;
        }
        Ok(Applied {
            before: events.len() - fresh.len(),
        })
    }
}

/// The events among `events` with a delivery row already: applied before, by an earlier
/// delivery of the same record (whoever the row is for).
async fn logged_among(
    conn: &mut PgConnection,
    events: &[&Event],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.envelope().event_id).collect();
    let logged: Vec<Uuid> = sqlx::query_scalar(
        "select distinct event_id from notification_deliveries where event_id = any($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(logged.into_iter().collect())
}

/// The topic a record type travels on (named in a dead letter's headers).
fn source_topic(event: &Event) -> &'static str {
    match event {
        Event::InvoiceCreated(_) | Event::InvoiceVoided(_) => topics::INVOICES,
        Event::PaymentReceived(_) | Event::PaymentFailed(_) => topics::PAYMENTS,
        Event::POSubmitted(_) | Event::POApproved(_) | Event::PORejected(_) => {
            topics::PURCHASE_ORDERS
        }
        Event::BillCreated(_) => topics::BILLS,
        Event::SalaryPosted(_) => topics::SALARIES,
        Event::UserCreated(_) => topics::USERS,
        Event::LedgerEntryPosted(_) => topics::LEDGER_ENTRIES,
        _ => topics::NOTIFICATION_COMMANDS,
    }
}

/// The Message-ID of a delivery: the same for every attempt, so that a receiver can drop
/// the copy a crash after the server's acceptance may cause.
pub fn message_id(event_id: Uuid, recipient: &str, template: &str) -> String {
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("dhanman-notification/{event_id}/{recipient}/{template}").as_bytes(),
    );
    format!("<{}@dhanman.notifications>", id.simple())
}

/// One row of the delivery log, rendered and waiting for the batch's insert.
struct Delivery<'a> {
    envelope: &'a Envelope,
    event_type: &'a str,
    source_topic: &'static str,
    recipient: String,
    template: &'static str,
    subject: String,
    text: String,
    html: String,
    status: &'static str,
    reason: Option<String>,
}

/// Renders one planned message into its delivery row: `pending` with its parts, `skipped`
/// for a party without an address, `dead_lettered` when its template does not render.
fn render<'a>(templates: &Templates, event: &'a Event, planned: Planned) -> Option<Delivery<'a>> {
    let envelope = event.envelope();
    let template = planned.template.name();
    let (recipient, skipped) = match planned.recipient {
        Recipient::Address(a) => (a, None),
        Recipient::Missing { party, reason } => (party, Some(reason)),
    };
    let mut context = planned.context;
    if let Json::Object(map) = &mut context {
        map.insert("recipient".into(), json!(recipient));
    }
    let rendered = match skipped {
        Some(_) => None,
        None => Some(
            templates
                .render(envelope.organization_id, planned.template, &context)
                .map(|mut r| {
                    if planned.template == Template::Welcome {
                        ensure_invitation(&mut r, &context);
                    }
                    r
                }),
        ),
    };
    let (status, reason, parts) = match (skipped, rendered) {
        (Some(reason), _) => ("skipped", Some(reason), None),
        (None, Some(Ok(r))) => ("pending", None, Some(r)),
        (None, Some(Err(e))) => ("dead_lettered", Some(e), None),
        (None, None) => return None,
    };
    let (subject, text, html) = parts
        .map(|r| (r.subject, r.text, r.html))
        .unwrap_or_default();
    Some(Delivery {
        envelope,
        event_type: event.name(),
        source_topic: source_topic(event),
        recipient,
        template,
        subject,
        text,
        html,
        status,
        reason,
    })
}

/// Inserts the batch's delivery rows in one statement, each `on conflict do nothing`;
/// for each row, whether it is new (false: logged before, by an earlier delivery of the
/// same record or by the same key earlier in this batch).
async fn insert(conn: &mut PgConnection, rows: &[Delivery<'_>]) -> Result<Vec<bool>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<(Uuid, String, String)> = sqlx::query_as(
        "insert into notification_deliveries
             (event_id, recipient, template, organization_id, correlation_id, event_type,
              source_topic, message_id, subject, body_text, body_html, status, reason)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::text[], $12::text[], $13::text[])
         on conflict do nothing
         returning event_id, recipient, template",
    )
    .bind(rows.iter().map(|r| r.envelope.event_id).collect::<Vec<_>>())
    .bind(column(rows, |r| Some(&r.recipient)))
    .bind(column(rows, |r| Some(r.template)))
    .bind(
        rows.iter()
            .map(|r| r.envelope.organization_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(rows, |r| Some(&r.envelope.correlation_id)))
    .bind(column(rows, |r| Some(r.event_type)))
    .bind(column(rows, |r| Some(r.source_topic)))
    .bind(
        rows.iter()
            .map(|r| message_id(r.envelope.event_id, &r.recipient, r.template))
            .collect::<Vec<_>>(),
    )
    .bind(column(rows, |r| Some(&r.subject)))
    .bind(column(rows, |r| Some(&r.text)))
    .bind(column(rows, |r| Some(&r.html)))
    .bind(column(rows, |r| Some(r.status)))
    .bind(column(rows, |r| r.reason.as_deref()))
    .fetch_all(&mut *conn)
    .await?;
    let mut new: std::collections::HashSet<(Uuid, String, String)> = new.into_iter().collect();
    Ok(rows
        .iter()
        .map(|r| {
            new.remove(&(
                r.envelope.event_id,
                r.recipient.clone(),
                r.template.to_string(),
            ))
        })
        .collect())
}

/// One text column of `rows`, for `unnest`.
fn column<'r>(
    rows: &'r [Delivery<'_>],
    f: impl Fn(&'r Delivery<'_>) -> Option<&'r str>,
) -> Vec<Option<&'r str>> {
    rows.iter().map(f).collect()
}

/// What follows a row's insert: its metric and log line, and a dead letter for one whose
/// template did not render. True when a new row waits to be sent.
async fn after_insert(
    conn: &mut PgConnection,
    delivery: Delivery<'_>,
    new: bool,
) -> Result<bool, sqlx::Error> {
    let Delivery {
        envelope,
        recipient,
        template,
        status,
        reason,
        ..
    } = delivery;
    if !new {
        tracing::debug!(correlation_id = %envelope.correlation_id, event_id = %envelope.event_id,
            %recipient, template, "delivery already logged");
        return Ok(false);
    }
    match status {
        "skipped" => {
            metrics::counter!("dhanman_notifications_total", "template" => template, "outcome" => "skipped")
                .increment(1);
            tracing::info!(correlation_id = %envelope.correlation_id, event_id = %envelope.event_id,
                party = %recipient, template, reason = reason.as_deref().unwrap_or_default(),
                "notification skipped");
            Ok(false)
        }
        "dead_lettered" => {
            let key = sender::DeliveryKey {
                event_id: envelope.event_id,
                recipient,
                template: template.to_string(),
            };
            sender::dead_letter(
                conn,
                &key,
                sender::Failure {
                    class: "template",
                    reason: reason.as_deref().unwrap_or_default(),
                    attempts: 0,
                },
            )
            .await?;
            Ok(false)
        }
        _ => {
            tracing::info!(correlation_id = %envelope.correlation_id, event_id = %envelope.event_id,
                %recipient, template, "notification queued");
            Ok(true)
        }
    }
}

fn base(envelope: &Envelope, organization_name: &str) -> serde_json::Map<String, Json> {
    let mut map = serde_json::Map::new();
    map.insert("organization_name".into(), json!(organization_name));
    map.insert("correlation_id".into(), json!(envelope.correlation_id));
    map
}

fn with(mut map: serde_json::Map<String, Json>, extra: Json) -> Json {
    if let Json::Object(extra) = extra {
        map.extend(extra);
    }
    Json::Object(map)
}

fn money(amount: Decimal, currency: &str) -> String {
    format_money(amount, currency)
}

/// A payment as a receipt tells it.
struct Paid<'a> {
    customer_id: Uuid,
    invoice_id: Option<Uuid>,
    amount: String,
    method: &'a str,
    reference: Option<&'a str>,
}

/// The receipt for a payment: to the customer's address, or to the one a command names.
async fn receipt(
    conn: &mut PgConnection,
    lookups: &mut Lookups,
    org: Uuid,
    ctx: serde_json::Map<String, Json>,
    paid: Paid<'_>,
    to: Option<&str>,
) -> Result<Vec<Planned>, sqlx::Error> {
    let customer = lookups.customer(conn, org, paid.customer_id).await?;
    let number = match paid.invoice_id {
        Some(id) => lookups.invoice(conn, org, id).await?.number,
        None => None,
    };
    let recipient = match to {
        Some(address) => Recipient::Address(address.to_string()),
        None => customer.recipient(paid.customer_id),
    };
    Ok(vec![Planned {
        template: Template::Receipt,
        recipient,
        context: with(
            ctx,
            json!({"customer_name": customer.name, "amount": paid.amount,
                "method": paid.method, "reference": paid.reference, "invoice_number": number}),
        ),
    }])
}

/// Whether `event` is of a type the notifier sends nothing for (the runtime then writes no
/// gate row for it: [`Processor::ignores`]); every other type [`plan`]s one message. Every
/// type is named, so that a new one has to be placed on one side or the other.
fn tells_no_one(event: &Event) -> bool {
    match event {
        Event::POSubmitted(_)
        | Event::InvoiceCreated(_)
        | Event::InvoiceVoided(_)
        | Event::PaymentFailed(_)
        | Event::BillCreated(_)
        | Event::LedgerEntryPosted(_)
        | Event::Other { .. } => true,
        Event::SendInvoiceEmail(_)
        | Event::PaymentReceived(_)
        | Event::SendPaymentReceipt(_)
        | Event::SendPaymentReminder(_)
        | Event::SendApprovalRequest(_)
        | Event::POApproved(_)
        | Event::PORejected(_)
        | Event::SalaryPosted(_)
        | Event::UserCreated(_) => false,
    }
}

/// Decides what `event` asks to send, looking up names and addresses.
async fn plan(
    conn: &mut PgConnection,
    lookups: &mut Lookups,
    event: &Event,
) -> Result<Vec<Planned>, sqlx::Error> {
    let envelope = event.envelope();
    let org = envelope.organization_id;
    if tells_no_one(event) {
        return Ok(Vec::new());
    }
    // Every arm below plans one message: the notifier's deliveries are its gate.
    let org_name = lookups.organization_name(conn, org).await?;
    let ctx = base(envelope, &org_name);
    let planned = match event {
        // An invoice's email is a command the invoicing side issues with it (or later, for a
        // copy), as a service on RabbitMQ does: the event itself tells no one, so a bridged
        // service's own command is not doubled by one of ours.
        Event::SendInvoiceEmail(c) => {
            let customer = lookups.customer(conn, org, c.customer_id).await?;
            let invoice = lookups.invoice(conn, org, c.invoice_id).await?;
            let recipient = match c.recipient.trim() {
                "" => customer.recipient(c.customer_id),
                address => Recipient::Address(address.to_string()),
            };
            let resent = c.template.as_deref() != Some(invoice_email::INVOICE);
            vec![Planned {
                template: Template::Invoice,
                recipient,
                context: with(
                    ctx,
                    json!({"customer_name": customer.name, "invoice_number": invoice.number,
                        "amount": money(c.amount, &c.currency), "issue_date": invoice.issue_date,
                        "due_date": c.due_date, "description": invoice.description,
                        "resent": resent}),
                ),
            }]
        }
        Event::PaymentReceived(e) => {
            let paid = Paid {
                customer_id: e.customer_id,
                invoice_id: e.invoice_id,
                amount: money(e.amount, &e.currency),
                method: &e.method,
                reference: e.reference.as_deref(),
            };
            receipt(conn, lookups, org, ctx, paid, None).await?
        }
        Event::SendPaymentReceipt(c) => {
            // A copy says what the first receipt said: how it was paid, from the payment.
            let how: Option<(String, Option<String>)> = sqlx::query_as(
                "select method, reference from payments where id = $1 and organization_id = $2",
            )
            .bind(c.payment_id)
            .bind(org)
            .fetch_optional(&mut *conn)
            .await?;
            let (method, reference) = how.unwrap_or_else(|| ("payment".to_string(), None));
            let paid = Paid {
                customer_id: c.customer_id,
                invoice_id: c.invoice_id,
                amount: money(c.amount, &c.currency),
                method: &method,
                reference: reference.as_deref(),
            };
            receipt(conn, lookups, org, ctx, paid, Some(&c.recipient)).await?
        }
        Event::SendPaymentReminder(c) => {
            let customer = lookups.customer(conn, org, c.customer_id).await?;
            let invoice = lookups.invoice(conn, org, c.invoice_id).await?;
            vec![Planned {
                template: Template::Reminder,
                recipient: Recipient::Address(c.recipient.clone()),
                context: with(
                    ctx,
                    json!({"customer_name": customer.name,
                        "invoice_number": invoice.number.unwrap_or_else(|| c.invoice_id.to_string()),
                        "amount": money(c.amount, &c.currency), "due_date": c.due_date}),
                ),
            }]
        }
        Event::SendApprovalRequest(c) => {
            let order = purchase_order(conn, org, c.po_id).await?;
            let requester = match order.requester_id {
                Some(id) => person(conn, id).await?.map(|p| p.name),
                None => None,
            };
            vec![Planned {
                template: Template::ApprovalRequest,
                recipient: Recipient::Address(c.recipient.clone()),
                context: with(
                    ctx,
                    json!({"requester_name": requester.unwrap_or_else(|| "A colleague".into()),
                        "approver_role": c.approver_role, "vendor_name": order.vendor_name,
                        "amount": money(c.amount, &c.currency), "po_id": c.po_id}),
                ),
            }]
        }
        Event::POApproved(e) => {
            let decision = Decision {
                po_id: e.po_id,
                requester_id: e.requester_id,
                decision: "approved",
                reason: None,
                amount: e.amount,
                currency: &e.currency,
            };
            po_decided(conn, ctx, org, decision).await?
        }
        Event::PORejected(e) => {
            let decision = Decision {
                po_id: e.po_id,
                requester_id: e.requester_id,
                decision: "rejected",
                reason: Some(&e.reason),
                amount: e.amount,
                currency: &e.currency,
            };
            po_decided(conn, ctx, org, decision).await?
        }
        Event::SalaryPosted(e) => {
            let salary: Option<(String, Option<String>)> = sqlx::query_as(
                "select employee_name, employee_email from salaries
                  where id = $1 and organization_id = $2",
            )
            .bind(e.salary_id)
            .bind(org)
            .fetch_optional(&mut *conn)
            .await?;
            let (name, email) = salary.unwrap_or_default();
            let as_user = person(conn, e.employee_id).await?;
            let name = if name.is_empty() {
                as_user.as_ref().map(|p| p.name.clone()).unwrap_or_default()
            } else {
                name
            };
            let recipient = match email.or(as_user.map(|p| p.email)) {
                Some(email) => Recipient::Address(email),
                None => Recipient::Missing {
                    party: format!("employee:{}", e.employee_id),
                    reason: "the salary has no employee_email and the employee is no user".into(),
                },
            };
            vec![Planned {
                template: Template::Payslip,
                recipient,
                context: with(
                    ctx,
                    json!({"employee_name": name, "period": e.period,
                        "amount": money(e.amount, &e.currency)}),
                ),
            }]
        }
        Event::UserCreated(e) => {
            let invitation = invitation(conn, envelope.event_id).await?;
            let (token, expires_at) = match invitation {
                Some((token, at)) => (
                    Some(token),
                    Some(at.format("%Y-%m-%d %H:%M UTC").to_string()),
                ),
                None => (None, None),
            };
            vec![Planned {
                template: Template::Welcome,
                recipient: Recipient::Address(e.email.clone()),
                context: with(
                    ctx,
                    json!({"name": e.name, "role": e.role, "invitation_token": token,
                        "invitation_expires_at": expires_at}),
                ),
            }]
        }
        // The types [`tells_no_one`] names, returned above.
        _ => Vec::new(),
    };
    Ok(planned)
}

/// The invitation token the welcome email of `event_id` carries, with its expiry: from the
/// short-lived `invitation_emails` row the command side wrote with the user (the token is
/// never in the event). No row: a user without an invitation (an organization's first
/// administrator), or one whose email was already sent (the row is deleted then) or whose
/// invitation was accepted.
async fn invitation(
    conn: &mut PgConnection,
    event_id: Uuid,
) -> Result<Option<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "select token, expires_at from invitation_emails
          where event_id = $1 and expires_at > now()",
    )
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await
}

/// A welcome rendered from an organization's override that does not show the invitation
/// token still has to: without it the invited person can never get a key. The token is
/// added to each part that lacks it.
fn ensure_invitation(rendered: &mut templates::Rendered, context: &Json) {
    let Some(token) = context.get("invitation_token").and_then(Json::as_str) else {
        return;
    };
    let expires = context
        .get("invitation_expires_at")
        .and_then(Json::as_str)
        .unwrap_or_default();
    if !rendered.text.contains(token) {
        rendered.text.push_str(&format!(
            "\nYour invitation code (valid until {expires}, usable once):\n\n    {token}\n"
        ));
    }
    if !rendered.html.contains(token) {
        let block = format!(
            "<p>Your invitation code (valid until {expires}, usable once):</p>\n<pre>\n{token}\n</pre>\n"
        );
        match rendered.html.rfind("</body>") {
            Some(at) => rendered.html.insert_str(at, &block),
            None => rendered.html.push_str(&block),
        }
    }
}

/// A purchase order's outcome, told to its requester.
struct Decision<'a> {
    po_id: Uuid,
    requester_id: Uuid,
    decision: &'a str,
    reason: Option<&'a str>,
    amount: Decimal,
    currency: &'a str,
}

async fn po_decided(
    conn: &mut PgConnection,
    ctx: serde_json::Map<String, Json>,
    org: Uuid,
    d: Decision<'_>,
) -> Result<Vec<Planned>, sqlx::Error> {
    let Decision {
        po_id,
        requester_id,
        decision,
        reason,
        amount,
        currency,
    } = d;
    let order = purchase_order(conn, org, po_id).await?;
    let requester = person(conn, requester_id).await?;
    let (recipient, name) = match requester {
        Some(p) => (Recipient::Address(p.email), p.name),
        None => (
            Recipient::Missing {
                party: format!("user:{requester_id}"),
                reason: "the requester is not a known user".into(),
            },
            String::new(),
        ),
    };
    Ok(vec![Planned {
        template: Template::PoDecided,
        recipient,
        context: with(
            ctx,
            json!({"requester_name": name, "decision": decision, "reason": reason,
                "vendor_name": order.vendor_name, "amount": money(amount, currency),
                "po_id": po_id}),
        ),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_deterministic_per_delivery() {
        let e = Uuid::new_v4();
        let a = message_id(e, "a@x.org", "invoice");
        assert_eq!(a, message_id(e, "a@x.org", "invoice"));
        assert_ne!(a, message_id(e, "b@x.org", "invoice"));
        assert_ne!(a, message_id(e, "a@x.org", "receipt"));
        assert!(a.starts_with('<') && a.ends_with('>'));
    }

    #[test]
    fn an_override_without_the_invitation_token_gets_it_added() {
        let token = "dhi_00ff";
        let context =
            json!({"invitation_token": token, "invitation_expires_at": "2026-12-10 09:30 UTC"});
        let mut r = templates::Rendered {
            subject: "Welcome".into(),
            text: "Hello\n".into(),
            html: "<html><body><p>Hello</p>\n</body></html>\n".into(),
        };
        ensure_invitation(&mut r, &context);
        assert!(r.text.ends_with(&format!("\n    {token}\n")), "{}", r.text);
        assert!(
            r.html.contains(&format!("<pre>\n{token}\n</pre>\n</body>")),
            "{}",
            r.html
        );
        // Shown already: nothing added; no token: nothing added.
        let before = r.clone();
        ensure_invitation(&mut r, &context);
        assert_eq!(r, before);
        ensure_invitation(&mut r, &json!({"invitation_token": null}));
        assert_eq!(r, before);
    }
}
