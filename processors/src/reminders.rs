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

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use dhanman_connectors::retry::Backoff;
use dhanman_plumbing::outbox;
use dhanman_schemas::Event;
use dhanman_schemas::events::{Envelope, InvoiceCreated, SendPaymentReminder};
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::companion::{self, Companion};
use crate::runtime::{ApplyError, Class, Processor, classify_db};
use crate::stop::Stop;
use crate::{Error, Result};

/// Days before the due date a reminder goes out unless configured.
pub const DEFAULT_DAYS_BEFORE: u32 = 3;

/// Firings per tick at most, so that a tick ends (and is recorded) under any backlog. Each
/// firing is its own transaction: a timer that cannot fire holds up no other.
const MAX_PER_TICK: usize = 10_000;

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

    async fn apply(&self, conn: &mut PgConnection, events: &[&Event]) -> Result<(), ApplyError> {
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
        Ok(())
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
async fn settle(conn: &mut PgConnection, run: &[Settlement<'_>]) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
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

/// Settings of the [`Scheduler`].
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often due timers are looked for.
    pub tick: Duration,
}

/// What one firing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    Sent,
    Cancelled,
    SkippedNoAddress,
    Failed,
}

/// Counts of one tick.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub sent: usize,
    pub cancelled: usize,
    pub skipped: usize,
    pub failed: usize,
}

#[derive(Debug, sqlx::FromRow)]
struct DueTimer {
    invoice_id: Uuid,
    organization_id: Uuid,
    customer_id: Option<Uuid>,
    amount: Option<Decimal>,
    currency: Option<String>,
    due_date: Option<NaiveDate>,
    correlation_id: String,
    created_by_event_id: Option<Uuid>,
    attempts: i32,
}

/// Fires due timers. Run one per process; several processes share the work safely.
pub struct Scheduler {
    pool: PgPool,
    settings: SchedulerSettings,
    instance_id: Uuid,
}

impl Scheduler {
    pub fn new(pool: PgPool, settings: SchedulerSettings) -> Self {
        Scheduler {
            pool,
            settings,
            instance_id: Uuid::now_v7(),
        }
    }

    /// Ticks until the task is dropped. A failed tick (database down) is logged and the
    /// next one tries again; nothing is lost, as the timers are rows.
    pub async fn run(self) -> Result<()> {
        self.run_until(Stop::never()).await
    }

    /// [`Scheduler::run`] until `stop` is asked for; a tick in progress is finished (each
    /// timer fires in a transaction of its own).
    pub async fn run_until(self, stop: Stop) -> Result<()> {
        tracing::info!(instance_id = %self.instance_id, tick = ?self.settings.tick, "reminder scheduler started");
        companion::run_until(self, stop).await
    }

    /// Fires every timer due when the tick starts, each in its own transaction, then
    /// records the tick.
    pub async fn tick(&self) -> Result<TickReport> {
        let (started,): (DateTime<Utc>,) = sqlx::query_as("select clock_timestamp()")
            .fetch_one(&self.pool)
            .await?;
        let mut report = TickReport::default();
        for _ in 0..MAX_PER_TICK {
            match self.fire_next().await? {
                None => break,
                Some(Fired::Sent) => report.sent += 1,
                Some(Fired::Cancelled) => report.cancelled += 1,
                Some(Fired::SkippedNoAddress) => report.skipped += 1,
                Some(Fired::Failed) => report.failed += 1,
            }
        }
        let (scheduled,): (i64,) = sqlx::query_as(
            "with tick as (
                 insert into reminder_schedulers (instance_id, last_tick_started_at, ticks)
                 values ($1, $2, 1)
                 on conflict (instance_id) do update
                    set last_tick_started_at = excluded.last_tick_started_at,
                        ticks = reminder_schedulers.ticks + 1)
             select count(*) from payment_reminders where state = 'scheduled'",
        )
        .bind(self.instance_id)
        .bind(started)
        .fetch_one(&self.pool)
        .await?;
        metrics::gauge!("dhanman_reminders_scheduled").set(scheduled as f64);
        Ok(report)
    }

    /// Claims one due timer nobody else holds and fires, cancels or skips it. `None` when
    /// no timer is due. A timer that fails for a reason other than the database being
    /// unavailable is put back a little later with the error noted.
    async fn fire_next(&self) -> Result<Option<Fired>> {
        let mut tx = self.pool.begin().await?;
        let timer: Option<DueTimer> = sqlx::query_as(
            "select invoice_id, organization_id, customer_id, amount, currency, due_date,
                    correlation_id, created_by_event_id, attempts
               from payment_reminders
              where state = 'scheduled' and fire_at <= now()
              order by fire_at, invoice_id
              limit 1
                for update skip locked",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(timer) = timer else {
            return Ok(None);
        };
        match fire(&mut tx, &timer, self.instance_id).await {
            Ok(outcome) => {
                tx.commit().await?;
                match outcome {
                    Fired::Sent => metrics::counter!("dhanman_reminders_fired_total").increment(1),
                    Fired::Cancelled => metrics::counter!(
                        "dhanman_reminders_cancelled_total", "reason" => "settled_at_firing"
                    )
                    .increment(1),
                    Fired::SkippedNoAddress => {
                        metrics::counter!("dhanman_reminders_skipped_total").increment(1)
                    }
                    Fired::Failed => {}
                }
                Ok(Some(outcome))
            }
            Err(Error::Database(e)) if classify_db(&e) == Class::Transient => {
                Err(Error::Database(e))
            }
            Err(e) => {
                drop(tx);
                let attempts = timer.attempts.saturating_add(1);
                tracing::error!(
                    correlation_id = %timer.correlation_id,
                    invoice_id = %timer.invoice_id,
                    attempts,
                    error = %e,
                    "payment reminder could not fire; trying again later"
                );
                metrics::counter!("dhanman_reminders_failures_total").increment(1);
                sqlx::query(
                    "update payment_reminders
                        set attempts = $2, last_error = $3, updated_at = now(),
                            fire_at = now() + least($2, 60) * interval '10 seconds'
                      where invoice_id = $1 and state = 'scheduled'",
                )
                .bind(timer.invoice_id)
                .bind(attempts)
                .bind(e.to_string())
                .execute(&self.pool)
                .await?;
                Ok(Some(Fired::Failed))
            }
        }
    }
}

/// A tick every `tick`, counted from the start of the last; a failed tick is tried again
/// at the next.
impl Companion for Scheduler {
    fn name(&self) -> &'static str {
        "reminder scheduler"
    }

    fn poll(&self) -> Duration {
        self.settings.tick
    }

    fn retry(&self) -> Backoff {
        Backoff::new(self.settings.tick, self.settings.tick)
    }

    async fn round(&mut self) -> Result<bool> {
        let report = self.tick().await?;
        if report != TickReport::default() {
            tracing::info!(?report, "reminder scheduler tick");
        }
        Ok(false)
    }
}

/// The firing transaction's work on a claimed timer.
async fn fire(conn: &mut PgConnection, timer: &DueTimer, instance_id: Uuid) -> Result<Fired> {
    let correlation_id = timer.correlation_id.as_str();
    let invoice_id = timer.invoice_id;
    let (Some(customer_id), Some(amount), Some(currency), Some(due_date)) = (
        timer.customer_id,
        timer.amount,
        timer.currency.as_deref(),
        timer.due_date,
    ) else {
        // The table's check makes this unreachable; say so rather than panic.
        return Err(Error::Config(format!(
            "scheduled reminder {invoice_id} lacks the invoice's details"
        )));
    };
    if let Some(how) = settled(conn, invoice_id, Some(amount), true).await? {
        sqlx::query(
            "update payment_reminders
                set state = 'cancelled', cancel_reason = $2, fired_by = $3, updated_at = now()
              where invoice_id = $1",
        )
        .bind(invoice_id)
        .bind(format!("{} (found when firing)", how.reason()))
        .bind(instance_id)
        .execute(&mut *conn)
        .await?;
        tracing::info!(%correlation_id, %invoice_id, reason = how.reason(), "invoice settled before its reminder fired; cancelled");
        return Ok(Fired::Cancelled);
    }
    let email: Option<(Option<String>,)> =
        sqlx::query_as("select email from customers where id = $1 and organization_id = $2")
            .bind(customer_id)
            .bind(timer.organization_id)
            .fetch_optional(&mut *conn)
            .await?;
    let recipient = email
        .and_then(|(e,)| e)
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    let Some(recipient) = recipient else {
        sqlx::query(
            "update payment_reminders
                set state = 'skipped_no_address', fired_by = $2, updated_at = now()
              where invoice_id = $1",
        )
        .bind(invoice_id)
        .bind(instance_id)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(%correlation_id, %invoice_id, %customer_id, "customer has no email; payment reminder skipped");
        return Ok(Fired::SkippedNoAddress);
    };
    let command = SendPaymentReminder {
        envelope: Envelope::new(
            timer.organization_id,
            correlation_id,
            timer.created_by_event_id.map(|id| id.to_string()),
        ),
        invoice_id,
        customer_id,
        recipient,
        amount,
        currency: currency.trim().to_string(),
        due_date,
    };
    let command_id = outbox::enqueue(conn, &command).await.map_err(|e| match e {
        dhanman_plumbing::Error::Database(db) => Error::Database(db),
        other => Error::Config(other.to_string()),
    })?;
    sqlx::query(
        "update payment_reminders
            set state = 'fired', fired_command_id = $2, fired_by = $3, updated_at = now()
          where invoice_id = $1",
    )
    .bind(invoice_id)
    .bind(command_id)
    .bind(instance_id)
    .execute(&mut *conn)
    .await?;
    tracing::info!(%correlation_id, %invoice_id, %command_id, "payment reminder fired");
    Ok(Fired::Sent)
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
