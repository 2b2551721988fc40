//! Payment reminders: a durable timer per invoice in `payment_reminders`, and a scheduler
//! that fires due timers as `SendPaymentReminder` commands through the outbox.
//!
//! The processor half (consumer group `dhanman.reminders`, invoices and payments topics):
//! - `InvoiceCreated` schedules a timer at the due date minus N days (00:00 UTC), with
//!   `on conflict do nothing`: a timer that exists in any state, scheduled, fired or
//!   cancelled, is never created again, so a replay of the invoice topic changes nothing.
//! - `InvoiceVoided` cancels the timer. `PaymentReceived` naming an invoice cancels it when
//!   the invoice is now settled: `invoices.status` is 'paid' on the command side (a partly
//!   paid invoice keeps its reminder, since something is still outstanding), or, for an
//!   invoice the command side does not know (another service's), when the payments seen
//!   on the topic add up to its amount. A cancel that finds no timer leaves a tombstone
//!   (a cancelled row), which is what makes a payment or void that is consumed before the
//!   invoice (they travel on different topics) win over the later `InvoiceCreated`.
//!   A batch's invoices up to its first payment or void are scheduled by one statement,
//!   which judges whether each is settled too; the payments and voids up to the next
//!   invoice are applied by one more, as if one after the other (each payment judged
//!   with the payments before it, the first event that settles an invoice cancelling it).
//!
//! The scheduler half ([`Scheduler`]) claims due timers with `for update skip locked`, so
//! any number of instances fire each timer once, and in the same transaction re-checks the
//! invoice on the command side under a share lock on its row (which the payment command
//! holds `for update` while it marks the invoice paid): an invoice paid whose
//! `PaymentReceived` has not been consumed yet is cancelled there instead of reminded.
//! The outbox row and the state change commit together; a crash before the commit leaves
//! the timer scheduled, after it leaves it fired.
//!
//! A customer without an email gets no reminder: the timer ends `skipped_no_address`, so
//! operators can see who was not reminded, and nothing is emitted that no one can deliver.

use chrono::{DateTime, Days, NaiveDate, Utc};
use dhanman_schemas::Event;
use dhanman_schemas::events::{Envelope, InvoiceCreated};
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{Applied, ApplyError, Processor};

mod scheduler;
pub use scheduler::{Fired, Scheduler, SchedulerSettings, TickReport};

/// Days before the due date a reminder goes out unless configured.
pub const DEFAULT_DAYS_BEFORE: u32 = 3;

/// When the reminder of an invoice due on `due_date` goes out: `days_before` days earlier,
/// at midnight UTC. A time already past means the next tick.
pub fn fire_at(due_date: NaiveDate, days_before: u32) -> DateTime<Utc> {
    due_date
        .checked_sub_days(Days::new(u64::from(days_before)))
        .unwrap_or(due_date)
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
}

/// The reminders processor: keeps the timers of `payment_reminders` in step with the
/// invoices and payments topics.
#[derive(Debug, Clone)]
pub struct Reminders {
    days_before: u32,
}

impl Reminders {
    pub fn new(days_before: u32) -> Self {
        Reminders { days_before }
    }
}

impl Default for Reminders {
    fn default() -> Self {
        Reminders::new(DEFAULT_DAYS_BEFORE)
    }
}

impl Processor for Reminders {
    fn name(&self) -> &str {
        "reminders"
    }

    fn topics(&self) -> Vec<String> {
        vec![topics::INVOICES.to_string(), topics::PAYMENTS.to_string()]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        let mut rest = events;
        while !rest.is_empty() {
            // Invoices in a row (each invoice once) are scheduled by one statement, and the
            // payments and voids up to the next invoice are applied by another, so the
            // order of the batch holds.
            let run = invoices_in_a_row(rest);
            if !run.is_empty() {
                schedule(conn, &run, self.days_before).await?;
                rest = &rest[run.len()..];
                continue;
            }
            let len = rest
                .iter()
                .take_while(|event| !matches!(event, Event::InvoiceCreated(_)))
                .count();
            settle(conn, &settlements(&rest[..len])).await?;
            rest = &rest[len..];
        }
        Ok(Applied::default())
    }
}

/// The `InvoiceCreated` events `events` starts with, up to the first other event or the
/// second of one invoice.
fn invoices_in_a_row<'e>(events: &[&'e Event]) -> Vec<&'e InvoiceCreated> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .map_while(|event| match event {
            Event::InvoiceCreated(invoice) if seen.insert(invoice.invoice_id) => Some(invoice),
            _ => None,
        })
        .collect()
}

/// Why an invoice needs no reminder any more, if it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Paid,
    Voided,
}

impl Settled {
    fn reason(self) -> &'static str {
        match self {
            Settled::Paid => "paid",
            Settled::Voided => "voided",
        }
    }

    fn from_reason(reason: &str) -> Option<Settled> {
        match reason {
            "paid" => Some(Settled::Paid),
            "voided" => Some(Settled::Voided),
            _ => None,
        }
    }
}

/// Whether an invoice is settled, in SQL over `u(invoice_id, amount)` left-joined to its
/// `invoices` row `i`: `'paid'`, `'voided'` or null. By the command side's row when this
/// database has one (its status, or its payments adding up to its amount), else by the
/// payments seen on the topic against `u.amount` (the invoice's amount, when known). The
/// optional argument is an SQL expression over `u` added to the payments stored on the
/// topic's side: those of the same statement, which its own reads do not see.
macro_rules! settled_sql {
    () => {
        settled_sql!("0")
    };
    ($also_paid:literal) => {
        concat!(
            "case when i.status = 'paid' then 'paid'
              when i.status = 'void' then 'voided'
              when i.id is not null then
                  case when (select coalesce(sum(p.amount), 0) from payments p
                              where p.invoice_id = i.id) >= i.amount
                       then 'paid' end
              when (select coalesce(sum(r.amount), 0) from payment_reminder_payments r
                     where r.invoice_id = u.invoice_id) + ",
            $also_paid,
            " >= u.amount
                   then 'paid'
         end"
        )
    };
}

/// Whether one invoice is settled ([`settled_sql`]); its `invoices` row, if any, is read
/// under a share lock when `lock`.
async fn settled(
    conn: &mut PgConnection,
    invoice_id: Uuid,
    amount: Option<Decimal>,
    lock: bool,
) -> Result<Option<Settled>, sqlx::Error> {
    if lock {
        sqlx::query("select 1 from invoices where id = $1 for share")
            .bind(invoice_id)
            .execute(&mut *conn)
            .await?;
    }
    let reason: Option<String> = sqlx::query_scalar(concat!(
        "select ",
        settled_sql!(),
        " from (select $1::uuid, $2::numeric) u(invoice_id, amount)
          left join invoices i on i.id = u.invoice_id"
    ))
    .bind(invoice_id)
    .bind(amount)
    .fetch_one(&mut *conn)
    .await?;
    Ok(reason.as_deref().and_then(Settled::from_reason))
}

/// Schedules a timer for each invoice (distinct invoices) in one statement, cancelled at
/// once for an invoice already settled ([`settled_sql`]).
async fn schedule(
    conn: &mut PgConnection,
    invoices: &[&InvoiceCreated],
    days_before: u32,
) -> Result<(), sqlx::Error> {
    // An existing row keeps its state; a tombstone only learns what the invoice says, for
    // readers of the API. Planned for each batch, as the notifier's look-ups are
    // (`notifier::lookups`): a plan kept from when the tables were small reads them whole.
    let written: Vec<(Uuid, bool, Option<String>)> = sqlx::query_as(concat!(
        "with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[],
                                  $5::numeric[], $6::text[], $7::date[], $8::text[], $9::uuid[])
                 with ordinality
                 as u(invoice_id, organization_id, customer_id, fire_at, amount, currency,
                      due_date, correlation_id, event_id, n)),
         judged as (
             select u.*, ",
        settled_sql!(),
        " as settled
               from input u left join invoices i on i.id = u.invoice_id)
         insert into payment_reminders
             (invoice_id, organization_id, customer_id, state, fire_at, amount, currency,
              due_date, correlation_id, created_by_event_id, cancel_reason)
         select invoice_id, organization_id, customer_id,
                case when settled is null then 'scheduled' else 'cancelled' end,
                fire_at, amount, currency, due_date, correlation_id, event_id, settled
           from judged order by n
         on conflict (invoice_id) do update
            set customer_id = excluded.customer_id, amount = excluded.amount,
                currency = excluded.currency, due_date = excluded.due_date,
                correlation_id = excluded.correlation_id,
                created_by_event_id = excluded.created_by_event_id, updated_at = now()
          where payment_reminders.created_by_event_id is null
            and payment_reminders.state <> 'scheduled'
         returning invoice_id, (xmax = 0), cancel_reason"
    ))
    .bind(invoices.iter().map(|i| i.invoice_id).collect::<Vec<_>>())
    .bind(
        invoices
            .iter()
            .map(|i| i.envelope.organization_id)
            .collect::<Vec<_>>(),
    )
    .bind(invoices.iter().map(|i| i.customer_id).collect::<Vec<_>>())
    .bind(
        invoices
            .iter()
            .map(|i| fire_at(i.due_date, days_before))
            .collect::<Vec<_>>(),
    )
    .bind(invoices.iter().map(|i| i.amount).collect::<Vec<_>>())
    .bind(
        invoices
            .iter()
            .map(|i| i.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(invoices.iter().map(|i| i.due_date).collect::<Vec<_>>())
    .bind(
        invoices
            .iter()
            .map(|i| i.envelope.correlation_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        invoices
            .iter()
            .map(|i| i.envelope.event_id)
            .collect::<Vec<_>>(),
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let written: std::collections::HashMap<Uuid, (bool, Option<String>)> = written
        .into_iter()
        .map(|(id, new, reason)| (id, (new, reason)))
        .collect();
    for invoice in invoices {
        let outcome = match written.get(&invoice.invoice_id) {
            None => "timer exists, kept as it is",
            Some((false, _)) => "cancelled before the invoice was seen, kept cancelled",
            Some((true, Some(_))) => {
                metrics::counter!("dhanman_reminders_cancelled_total", "reason" => "settled_before_scheduling")
                    .increment(1);
                "invoice already settled, not scheduled"
            }
            Some((true, None)) => "scheduled",
        };
        tracing::info!(
            correlation_id = %invoice.envelope.correlation_id,
            invoice_id = %invoice.invoice_id,
            fire_at = %fire_at(invoice.due_date, days_before),
            outcome,
            "payment reminder"
        );
    }
    Ok(())
}

/// A payment naming an invoice, or a void, as [`settle`] takes it.
#[derive(Debug)]
struct Settlement<'e> {
    envelope: &'e Envelope,
    invoice_id: Uuid,
    /// The payment's id and amount; `None` for a void.
    payment: Option<(Uuid, Decimal)>,
}

/// The payments naming an invoice and the voids among `events`, in order. A payment on
/// account (no invoice) cancels nothing.
fn settlements<'e>(events: &[&'e Event]) -> Vec<Settlement<'e>> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::InvoiceVoided(void) => Some(Settlement {
                envelope: &void.envelope,
                invoice_id: void.invoice_id,
                payment: None,
            }),
            Event::PaymentReceived(payment) => payment.invoice_id.map(|invoice_id| Settlement {
                envelope: &payment.envelope,
                invoice_id,
                payment: Some((payment.payment_id, payment.amount)),
            }),
            _ => None,
        })
        .collect()
}

/// Applies payments and voids in one statement, as if one after the other. Each payment is
/// noted against its invoice (once per payment id) and judged with the payments before it
/// ([`settled_sql`]); a void settles its invoice. The first event that settles an invoice
/// cancels its scheduled timer, or leaves a tombstone when there is none yet; a fired,
/// skipped or already cancelled timer stays as it is.
///
/// An invoice belongs to one organization (its timer's, or the command side's): a payment
/// or void naming it under another is refused, the batch with it, for the runtime to
/// dead-letter that record, never a cancel of someone else's reminder.
async fn settle(conn: &mut PgConnection, run: &[Settlement<'_>]) -> Result<(), ApplyError> {
    if run.is_empty() {
        return Ok(());
    }
    let foreign: Option<Uuid> = sqlx::query_scalar(
        "select u.invoice_id from unnest($1::uuid[], $2::uuid[]) as u(invoice_id, organization_id)
          where exists (select 1 from payment_reminders r
                         where r.invoice_id = u.invoice_id
                           and r.organization_id <> u.organization_id)
             or exists (select 1 from invoices i
                         where i.id = u.invoice_id and i.organization_id <> u.organization_id)
          limit 1",
    )
    .bind(run.iter().map(|s| s.invoice_id).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|s| s.envelope.organization_id)
            .collect::<Vec<_>>(),
    )
    // Planned for each batch, as the statement below is: a plan made once for any input
    // reads the invoices whole once they outgrow the statistics it was made with.
    .persistent(false)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(invoice_id) = foreign {
        return Err(ApplyError::Poison(format!(
            "invoice_id: invoice {invoice_id} belongs to another organization"
        )));
    }
    // Per event in order: how it settles its invoice (null: it does not), whether it is
    // the first of its invoice to, and what its cancel did (null: nothing to cancel).
    // Planned for each batch, as `schedule`'s statement is.
    let judged: Vec<(Option<String>, bool, Option<bool>)> = sqlx::query_as(concat!(
        "with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::uuid[],
                                  $5::uuid[], $6::text[])
                 with ordinality
                 as e(invoice_id, payment_id, paid, event_id, organization_id,
                      correlation_id, n)),
         noted as (
             insert into payment_reminder_payments (invoice_id, payment_id, event_id, amount)
             select invoice_id, payment_id, event_id, paid from input
              where payment_id is not null order by n
             on conflict do nothing
             returning invoice_id, payment_id),
         firsts as (
             select e.*, e.n = min(e.n) over (partition by e.invoice_id, e.payment_id) as first
               from input e),
         counted as (
             select f.*,
                    sum(case when f.first and w.payment_id is not null then f.paid else 0 end)
                        over (partition by f.invoice_id order by f.n) as run_paid
               from firsts f
               left join noted w
                 on w.invoice_id = f.invoice_id and w.payment_id = f.payment_id),
         judged as (
             select u.n, u.invoice_id, u.event_id, u.organization_id, u.correlation_id,
                    case when u.payment_id is null then 'voided' else ",
        settled_sql!("u.run_paid"),
        " end as settled
               from (select c.*, t.amount from counted c
                       left join payment_reminders t on t.invoice_id = c.invoice_id) u
               left join invoices i on i.id = u.invoice_id),
         first_settling as (
             select distinct on (invoice_id) * from judged
              where settled is not null order by invoice_id, n),
         cancelled as (
             insert into payment_reminders
                 (invoice_id, organization_id, state, correlation_id, cancelled_by_event_id,
                  cancel_reason)
             select invoice_id, organization_id, 'cancelled', correlation_id, event_id, settled
               from first_settling
             on conflict (invoice_id) do update
                set state = 'cancelled',
                    cancelled_by_event_id = excluded.cancelled_by_event_id,
                    cancel_reason = excluded.cancel_reason, updated_at = now()
              where payment_reminders.state = 'scheduled'
             returning invoice_id, (xmax = 0) as tombstone)
         select j.settled, coalesce(f.n = j.n, false), c.tombstone
           from judged j
           left join first_settling f on f.invoice_id = j.invoice_id
           left join cancelled c on c.invoice_id = j.invoice_id
          order by j.n"
    ))
    .bind(run.iter().map(|s| s.invoice_id).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|s| s.payment.map(|(id, _)| id))
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|s| s.payment.map(|(_, amount)| amount))
            .collect::<Vec<_>>(),
    )
    .bind(run.iter().map(|s| s.envelope.event_id).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|s| s.envelope.organization_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|s| s.envelope.correlation_id.as_str())
            .collect::<Vec<_>>(),
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    for (settlement, (settled, first, tombstone)) in run.iter().zip(judged) {
        let correlation_id = &settlement.envelope.correlation_id;
        let invoice_id = settlement.invoice_id;
        let Some(how) = settled.as_deref().and_then(Settled::from_reason) else {
            tracing::info!(
                %correlation_id,
                %invoice_id,
                "payment does not settle the invoice (or the invoice is not known yet); reminder kept"
            );
            continue;
        };
        let outcome = match (first, tombstone) {
            (true, Some(true)) => "tombstone left for an invoice not seen yet",
            (true, Some(false)) => "cancelled",
            _ => "nothing to cancel",
        };
        if first && tombstone.is_some() {
            metrics::counter!("dhanman_reminders_cancelled_total", "reason" => how.reason())
                .increment(1);
        }
        tracing::info!(
            %correlation_id,
            %invoice_id,
            reason = how.reason(),
            outcome,
            "payment reminder cancel"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhanman_schemas::events::{InvoiceVoided, PaymentReceived};

    #[test]
    fn a_reminder_goes_out_days_before_the_due_date_at_midnight_utc() {
        let due: NaiveDate = "2026-12-10".parse().unwrap();
        assert_eq!(fire_at(due, 3).to_rfc3339(), "2026-12-07T00:00:00+00:00");
        assert_eq!(fire_at(due, 0).to_rfc3339(), "2026-12-10T00:00:00+00:00");
        assert_eq!(fire_at(due, 30).to_rfc3339(), "2026-11-10T00:00:00+00:00");
    }

    fn invoice(invoice_id: Uuid) -> Event {
        Event::InvoiceCreated(crate::fixtures::invoice(
            invoice_id,
            Uuid::now_v7(),
            "100.00",
        ))
    }

    #[test]
    fn a_run_of_invoices_ends_at_another_event_or_an_invoice_seen_twice() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let void = Event::InvoiceVoided(InvoiceVoided {
            envelope: crate::fixtures::envelope(),
            invoice_id: a,
            customer_id: Uuid::now_v7(),
            amount: "100.00".parse().unwrap(),
            currency: "INR".into(),
            reason: "duplicate".into(),
        });
        let events = [
            invoice(a),
            invoice(b),
            void,
            invoice(c),
            invoice(a),
            invoice(c),
        ];
        let events: Vec<&Event> = events.iter().collect();
        let ids = |run: Vec<&InvoiceCreated>| run.iter().map(|i| i.invoice_id).collect::<Vec<_>>();
        assert_eq!(ids(invoices_in_a_row(&events)), [a, b]);
        assert!(invoices_in_a_row(&events[2..]).is_empty());
        assert_eq!(ids(invoices_in_a_row(&events[3..])), [c, a]);
        assert_eq!(ids(invoices_in_a_row(&events[5..])), [c]);
        assert!(invoices_in_a_row(&[]).is_empty());
    }

    #[test]
    fn settlements_are_the_voids_and_the_payments_naming_an_invoice_in_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let payment = |invoice_id| PaymentReceived {
            envelope: crate::fixtures::envelope(),
            payment_id: Uuid::now_v7(),
            invoice_id,
            customer_id: Uuid::now_v7(),
            amount: "40.00".parse().unwrap(),
            currency: "INR".into(),
            method: "upi".into(),
            reference: None,
        };
        let (to_a, on_account) = (payment(Some(a)), payment(None));
        let void = InvoiceVoided {
            envelope: crate::fixtures::envelope(),
            invoice_id: b,
            customer_id: Uuid::now_v7(),
            amount: "100.00".parse().unwrap(),
            currency: "INR".into(),
            reason: "duplicate".into(),
        };
        let events = [
            Event::PaymentReceived(on_account),
            Event::InvoiceVoided(void.clone()),
            invoice(a),
            Event::PaymentReceived(to_a.clone()),
        ];
        let events: Vec<&Event> = events.iter().collect();
        let run: Vec<_> = settlements(&events)
            .iter()
            .map(|s| (s.envelope.event_id, s.invoice_id, s.payment))
            .collect();
        assert_eq!(
            run,
            [
                (void.envelope.event_id, b, None),
                (
                    to_a.envelope.event_id,
                    a,
                    Some((to_a.payment_id, to_a.amount))
                ),
            ]
        );
    }

    #[test]
    fn the_processor_reads_invoices_and_payments_as_reminders() {
        let p = Reminders::default();
        assert_eq!(p.name(), "reminders");
        assert_eq!(p.topics(), vec![topics::INVOICES, topics::PAYMENTS]);
        assert_eq!(p.days_before, DEFAULT_DAYS_BEFORE);
    }
}
