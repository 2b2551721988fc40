//! The scheduler half of payment reminders (see the module above): claims due timers and
//! fires each once, as a `SendPaymentReminder` in the outbox, or cancels it when the
//! invoice is settled by then.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use dhanman_connectors::retry::Backoff;
use dhanman_plumbing::outbox;
use dhanman_schemas::events::{Envelope, SendPaymentReminder};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::settled;
use crate::companion::{self, Companion};
use crate::runtime::{Class, classify_db};
use crate::stop::Stop;
use crate::{Error, Result};

/// Firings per tick at most, so that a tick ends (and is recorded) under any backlog. Each
/// firing is its own transaction: a timer that cannot fire holds up no other.
const MAX_PER_TICK: usize = 10_000;

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
