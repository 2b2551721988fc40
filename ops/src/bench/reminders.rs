//! `dhanman bench reminders`: the reminders processor over invoices and the payments that
//! name them, already on the broker, against the raw limits of the same run:
//!
//! - raw consume: records/s a plain consumer reads the topics at, decoding nothing;
//! - raw COPY: events/s Postgres takes when the rows the processor writes per event (a
//!   gate row; a timer per invoice, a noted payment per payment) are `COPY`ed into tables
//!   with the same indexes and constraints;
//! - reminders: events/s `dhanman process reminders` schedules timers and applies payments
//!   at (half of them pay their invoice in full, which cancels its timer); the timers are
//!   checked afterwards.

use anyhow::{Context, bail};
use chrono::{Days, Utc};
use dhanman_schemas::Codec;
use dhanman_schemas::events::{Envelope, InvoiceCreated, PaymentReceived, Record};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use super::common::{self, Common, Report, Row};
use super::pipeline::{self, Deployed, Stage, status};
use super::raw;

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Events to produce: invoices, each followed by a payment naming it.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Batch size of the processor (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_MAX_BATCH)]
    pub batch_size: usize,
    /// Concurrent transactions per batch (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_LANES)]
    pub lanes: usize,
}

/// The rows the processor writes a row into per event, in the order [`copy_like`] makes
/// them.
///
/// [`copy_like`]: raw::copy_like
const PER_EVENT_TABLES: [&str; 3] = [
    "processed_events",
    "payment_reminders",
    "payment_reminder_payments",
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    let stage = Stage::open(&args.common, args.partitions).await?;
    let report = measure(&args, &stage).await;
    let closed = stage.close().await;
    let report = report?;
    closed?;
    report.print(args.common.json);
    Ok(())
}

async fn measure(args: &Args, stage: &Stage) -> anyhow::Result<Report> {
    let common = &args.common;
    common::reset_peak_rss();
    let org = pipeline::organization(stage).await?;
    let records = make_records(&stage.codec, org, args.events).await?;
    let events = records.len();
    let produce_secs = pipeline::produce_to(common, stage, &records).await?;
    drop(records);
    let bootstrap = &common.kafka_bootstrap_servers;
    let raw_consume_per_s = raw::consume_per_s(common, stage, events).await?;
    let raw_copy_per_s = raw::per_s(common, events, || {
        raw_copy(&stage.db.url, org, events, args.batch_size, args.lanes)
    })
    .await?;

    status(
        common,
        format!("running the reminders processor over {events} events ..."),
    );
    let deployed = Deployed {
        processor: "reminders",
        batch_size: args.batch_size,
        lanes: args.lanes,
    };
    let applied = pipeline::run_processor(&deployed, stage, bootstrap, events).await?;
    check_timers(&stage.db.pool, org, events).await?;

    let reminders_per_s = applied.events as f64 / applied.secs;
    let lower = raw_consume_per_s.min(raw_copy_per_s);
    let mut r = Report::new(
        "reminders",
        format!(
            "{events} events (invoices, each followed by a payment naming it), {} partitions, \
             batch {}, {} lanes, produce {:.0} events/s",
            args.partitions,
            args.batch_size,
            args.lanes,
            events as f64 / produce_secs
        ),
    );
    r.rows = vec![
        Row::new("raw consume (records)", raw_consume_per_s, "/s")
            .against("lower raw limit", lower),
        Row::new("raw COPY (events' rows)", raw_copy_per_s, "events/s")
            .against("lower raw limit", lower),
        Row::new("reminders (timers, payments)", reminders_per_s, "events/s")
            .against("lower raw limit", lower),
        Row::new(
            "peak RSS (dhanman process reminders)",
            applied.peak_rss_bytes as f64 / 1048576.0,
            "MiB",
        ),
    ];
    r.notes = vec![
        "raw COPY: per event a gate row, and a timer per invoice or a noted payment per \
         payment, COPYed into tables with the processor's indexes and constraints (a \
         payment's cancel is an upsert, not COPYable, and left out)"
            .into(),
        format!(
            "raw rates are medians of {} runs; the processor's is a single run over {} events",
            common.runs(),
            applied.events
        ),
    ];
    r.field("events", events);
    r.field("reminders_per_s", reminders_per_s);
    r.field("raw_consume_per_s", raw_consume_per_s);
    r.field("raw_copy_per_s", raw_copy_per_s);
    r.field("ratio_to_limit", reminders_per_s / lower);
    r.field("peak_rss_bytes", applied.peak_rss_bytes);
    Ok(r)
}

/// An invoice, then a payment naming it, for 1,000 residents: every other payment pays its
/// invoice in full, the rest all but one rupee of it. Due 90 days ahead, so no timer fires during the run.
async fn make_records(
    codec: &Codec,
    org: Uuid,
    n: usize,
) -> anyhow::Result<Vec<(bool, String, Vec<u8>)>> {
    let customers: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    let issue = Utc::now().date_naive();
    let due = issue
        .checked_add_days(Days::new(90))
        .context("a due date")?;
    let mut out = Vec::with_capacity(n);
    let mut invoice: Option<InvoiceCreated> = None;
    for i in 0..n {
        let envelope = Envelope::new(org, &format!("bench-{i}"), None);
        match invoice.take() {
            None => {
                let e = InvoiceCreated {
                    envelope,
                    invoice_id: Uuid::now_v7(),
                    customer_id: customers[(i / 2) % customers.len()],
                    invoice_number: format!("R-{i}"),
                    amount: Decimal::new(100_000 + (i as i64 % 5000), 2),
                    currency: "INR".into(),
                    issue_date: issue,
                    due_date: due,
                    description: None,
                    period: None,
                    tax_amount: None,
                };
                out.push((true, e.key(), codec.encode(&e).await?));
                invoice = Some(e);
            }
            Some(paid) => {
                let in_full = (i / 2) % 2 == 0;
                let e = PaymentReceived {
                    envelope,
                    payment_id: Uuid::now_v7(),
                    invoice_id: Some(paid.invoice_id),
                    customer_id: paid.customer_id,
                    amount: if in_full {
                        paid.amount
                    } else {
                        paid.amount - Decimal::ONE
                    },
                    currency: "INR".into(),
                    method: "upi".into(),
                    reference: None,
                };
                out.push((false, e.key(), codec.encode(&e).await?));
            }
        }
    }
    Ok(out)
}

/// The events of [`make_records`] as the processor leaves them: a timer per invoice, those
/// paid in full cancelled as paid, every payment noted.
async fn check_timers(pool: &PgPool, org: Uuid, events: usize) -> anyhow::Result<()> {
    let invoices = events.div_ceil(2);
    let payments = events / 2;
    let in_full = payments.div_ceil(2);
    let (timers, cancelled, noted): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where state = 'cancelled' and cancel_reason = 'paid'),
                (select count(*) from payment_reminder_payments)
           from payment_reminders where organization_id = $1",
    )
    .bind(org)
    .fetch_one(pool)
    .await?;
    if (timers as usize, cancelled as usize, noted as usize) != (invoices, in_full, payments) {
        bail!(
            "timers are wrong: {timers} timers ({invoices} invoices), {cancelled} cancelled as \
             paid ({in_full} paid in full), {noted} payments noted ({payments} payments)"
        );
    }
    Ok(())
}

/// `COPY` of the rows the processor writes for `n` events of [`make_records`]' shape, in
/// `lanes` concurrent parts (an invoice and the payment naming it in the same part and
/// transaction), each committing its share of a batch of `batch_size`; returns the seconds
/// the COPYs and the commits took.
async fn raw_copy(
    url: &str,
    org: Uuid,
    n: usize,
    batch_size: usize,
    lanes: usize,
) -> anyhow::Result<f64> {
    use std::fmt::Write;
    let mut parts = raw::Parts::lane_shares(lanes, batch_size, 2);
    let mut invoice = None;
    for i in 0..n {
        let [gate, timers, payments] = parts.next_event(i / 2);
        let event = Uuid::now_v7();
        let _ = writeln!(gate, "reminders\t{event}\tbench\t0\t{i}");
        let amount = format!("{}.{:02}", 1000 + i % 5000, i % 100);
        match invoice.take() {
            None => {
                let id = Uuid::now_v7();
                let customer = Uuid::now_v7();
                let _ = writeln!(
                    timers,
                    "{id}\t{org}\t{customer}\tscheduled\t2027-03-01 00:00:00+00\t{amount}\tINR\t\
                     2027-03-04\tbench-{i}\t{event}"
                );
                invoice = Some(id);
            }
            Some(id) => {
                let payment = Uuid::now_v7();
                let _ = writeln!(payments, "{id}\t{payment}\t{event}\t{amount}");
            }
        }
    }
    let targets = [
        "processed_events (processor, event_id, topic, partition, \"offset\")",
        "payment_reminders (invoice_id, organization_id, customer_id, state, fire_at, \
         amount, currency, due_date, correlation_id, created_by_event_id)",
        "payment_reminder_payments (invoice_id, payment_id, event_id, amount)",
    ];
    raw::copy_like(url, &PER_EVENT_TABLES, &targets, &parts).await
}
