//! `dhanman bench backlog`: what a long backlog behind the processors costs the API's
//! callers. `dhanman up` takes invoices through its API at a fixed rate (`--rate`) for
//! `--seconds` with nothing behind it: the raw limit, the same API under the same load with
//! the processors keeping up. Then `--events` invoices and payments of the same customers
//! are put straight on the pipeline's topics, as a backfill puts them, and the same load
//! runs again while the processors work through them. The backlog is worked off when the
//! outbox and every group's lag are back to the highest the load alone left in the first
//! phase; afterwards everything is drained and the books audited.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::common::{self, Common, Report, Row};
use super::deployed::{Backlog, Deployed, Deployment};
use super::load::{self, Client, Invoices};
use super::pipeline::Events;

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Commands per second, in both phases.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Events put behind the processors (half invoices, half payments).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Seconds of commands at the same rate before, not measured.
    #[arg(long, default_value_t = 3)]
    pub warm_up: u64,
    /// Most commands in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[command(flatten)]
    pub deployment: Deployment,
    /// Longest wait for the backlog to drain before the audit.
    #[arg(long, default_value_t = 300)]
    pub drain_seconds: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    Deployed::measure_and_print(&args.common, &args.deployment, async |deployed| {
        measure(&args, deployed).await
    })
    .await
}

/// One phase: the load's outcome and the backlog sampled while it ran.
struct Phase {
    outcome: load::Outcome,
    /// Each sample and when it was taken, since the phase began.
    samples: Vec<(Duration, Backlog)>,
}

impl Phase {
    /// The highest outbox depth and group lag sampled.
    fn highest(&self) -> (i64, i64) {
        self.samples.iter().fold((0, 0), |(o, l), (_, b)| {
            (o.max(b.outbox), l.max(b.max_lag()))
        })
    }
}

async fn phase(
    args: &Args,
    deployed: &mut Deployed,
    client: &Arc<Client>,
    make: Arc<dyn Fn(u64) -> load::Command + Send + Sync>,
) -> anyhow::Result<Phase> {
    let sending = tokio::spawn(load::open_loop(
        client.clone(),
        args.connections,
        f64::from(args.rate),
        Duration::from_secs(args.seconds.max(1)),
        make,
        None,
    ));
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    while !sending.is_finished() {
        ticker.tick().await;
        deployed.check_running()?;
        samples.push((start.elapsed(), deployed.backlog().await?));
    }
    Ok(Phase {
        outcome: sending.await?,
        samples,
    })
}

/// Each phase's commands under keys of their own.
fn keyed(
    make: &Arc<dyn Fn(u64) -> load::Command + Send + Sync>,
    phase: u64,
) -> Arc<dyn Fn(u64) -> load::Command + Send + Sync> {
    let make = make.clone();
    Arc::new(move |seq| make((phase << 40) + seq))
}

/// The command side's rows of the events put behind (invoices and payments, as the API
/// writes them), so that the books audited afterwards account for every entry they post.
async fn command_side(pool: &PgPool, org: Uuid, events: &[Events]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for chunk in events.chunks(10_000) {
        let invoices: Vec<_> = chunk
            .iter()
            .filter_map(|e| match e {
                Events::Invoice(i) => Some(i),
                Events::Payment(_) => None,
            })
            .collect();
        let payments: Vec<_> = chunk
            .iter()
            .filter_map(|e| match e {
                Events::Payment(p) => Some(p),
                Events::Invoice(_) => None,
            })
            .collect();
        sqlx::query(
            "insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                                   currency, issue_date, due_date, period)
             select id, $1, customer, number, amount, currency, issue, due, period
               from unnest($2::uuid[], $3::uuid[], $4::text[], $5::numeric[], $6::text[],
                           $7::date[], $8::date[], $9::text[])
                    as u(id, customer, number, amount, currency, issue, due, period)",
        )
        .bind(org)
        .bind(invoices.iter().map(|i| i.invoice_id).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.customer_id).collect::<Vec<_>>())
        .bind(
            invoices
                .iter()
                .map(|i| i.invoice_number.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(invoices.iter().map(|i| i.amount).collect::<Vec<_>>())
        .bind(
            invoices
                .iter()
                .map(|i| i.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(invoices.iter().map(|i| i.issue_date).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.due_date).collect::<Vec<_>>())
        .bind(
            invoices
                .iter()
                .map(|i| i.period.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into payments (id, organization_id, customer_id, amount, currency, method)
             select id, $1, customer, amount, currency, method
               from unnest($2::uuid[], $3::uuid[], $4::numeric[], $5::text[], $6::text[])
                    as u(id, customer, amount, currency, method)",
        )
        .bind(org)
        .bind(payments.iter().map(|p| p.payment_id).collect::<Vec<_>>())
        .bind(payments.iter().map(|p| p.customer_id).collect::<Vec<_>>())
        .bind(payments.iter().map(|p| p.amount).collect::<Vec<_>>())
        .bind(
            payments
                .iter()
                .map(|p| p.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            payments
                .iter()
                .map(|p| p.method.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn latency(outcome: &load::Outcome, q: f64) -> f64 {
    common::percentile(&outcome.sorted_latencies(), q)
}

async fn measure(args: &Args, deployed: &mut Deployed) -> anyhow::Result<Report> {
    let society = deployed.society(args.deployment.customers).await?;
    let invoices = Invoices::new(&society.customers);
    let client = deployed.client(&society, args.connections)?;
    let make = super::api::singles(&invoices, "/v1/invoices");
    let codec = dhanman_schemas::Codec::new(&format!("{}/schema-registry", deployed.base))?
        .with_topic_prefix(&deployed.prefix);
    super::pipeline::status(&args.common, format!("making {} events ...", args.events));
    let events = Events::of(society.organization_id, &society.customers, args.events)?;
    command_side(&deployed.db.pool, society.organization_id, &events).await?;
    let records = super::pipeline::encode(&codec, &events).await?;
    drop(events);

    load::open_loop(
        client.clone(),
        args.connections,
        f64::from(args.rate),
        Duration::from_secs(args.warm_up),
        super::api::warm(&invoices, "/v1/invoices"),
        None,
    )
    .await;
    super::pipeline::status(
        &args.common,
        format!(
            "{} commands/s for {} s, nothing behind ...",
            args.rate, args.seconds
        ),
    );
    let idle = phase(args, deployed, &client, keyed(&make, 1)).await?;
    let (idle_outbox, idle_lag) = idle.highest();

    super::pipeline::status(
        &args.common,
        format!(
            "{} events behind the processors, then {} commands/s for {} s ...",
            records.len(),
            args.rate,
            args.seconds
        ),
    );
    let put = Instant::now();
    let produce_secs = deployed.produce(&records).await?;
    drop(records);
    let behind = phase(args, deployed, &client, keyed(&make, 2)).await?;
    let caught_up = behind
        .samples
        .iter()
        .position(|(_, b)| b.outbox <= idle_outbox && b.max_lag() <= idle_lag);
    let during = caught_up.map(|i| behind.samples[i].0);
    // The group furthest behind in the last sample before the backlog was worked off.
    let last_behind = caught_up.unwrap_or(behind.samples.len()).checked_sub(1);
    let slowest = last_behind
        .and_then(|i| behind.samples[i].1.furthest_behind())
        .unwrap_or("none")
        .to_string();

    super::pipeline::status(&args.common, "draining the backlog ...".into());
    let drained = deployed
        .drain(Duration::from_secs(args.drain_seconds))
        .await?;
    let worked_off = match during {
        Some(at) => Duration::from_secs_f64(produce_secs) + at,
        None => put.elapsed(),
    };
    let audit = dhanman_processors::audit::audit(&deployed.db.pool).await?;
    let peak = deployed.peak_rss_bytes().unwrap_or(0);
    let (_, max_lag) = behind.highest();
    let worked_off_per_s = args.events as f64 / worked_off.as_secs_f64();

    let (idle_p50, idle_p99) = (latency(&idle.outcome, 50.0), latency(&idle.outcome, 99.0));
    let (p50, p99) = (
        latency(&behind.outcome, 50.0),
        latency(&behind.outcome, 99.0),
    );
    let mut r = Report::new(
        "backlog",
        format!(
            "dhanman up, {} commands/s for {} s with nothing behind, then with {} events behind; {} customers",
            args.rate, args.seconds, args.events, args.deployment.customers
        ),
    );
    r.rows = vec![
        Row::new("POST /v1/invoices p50, backlog", p50, "ms")
            .against("p50, nothing behind", idle_p50),
        Row::new("POST /v1/invoices p99, backlog", p99, "ms")
            .against("p99, nothing behind", idle_p99),
        Row::new(
            "commands answered, backlog",
            behind.outcome.rate(),
            "cmds/s",
        )
        .against("answered, nothing behind", idle.outcome.rate()),
        Row::new("backlog worked off", worked_off_per_s, "events/s"),
        Row::new("highest lag, backlog", max_lag as f64, "records")
            .against("events put behind", args.events as f64),
        Row::new("peak RSS (dhanman up)", peak as f64 / 1048576.0, "MiB"),
    ];
    let failed = idle.outcome.failed + behind.outcome.failed;
    let dropped = idle.outcome.dropped + behind.outcome.dropped;
    r.notes = vec![
        format!(
            "worked off {:.1} s after the events were put (producing them took {produce_secs:.1} s): {}",
            worked_off.as_secs_f64(),
            if during.is_some() {
                "while the load ran, when the outbox and every lag were back to the load's own"
            } else {
                "after the load, when everything had drained"
            }
        ),
        format!(
            "the load alone left at most {idle_outbox} in the outbox and a lag of {idle_lag}; \
             the group furthest behind before then: {slowest}"
        ),
        format!(
            "{failed} commands failed, {dropped} dropped{}",
            idle.outcome
                .first_failure
                .as_ref()
                .or(behind.outcome.first_failure.as_ref())
                .map(|f| format!(" (the first: {f})"))
                .unwrap_or_default()
        ),
        "the API's per-key rate limit is off (DHANMAN_API_RATE_LIMIT=0); no mail server, so \
         emails wait in the delivery log"
            .into(),
        format!(
            "after the load: backlog {}; {}",
            if drained { "drained" } else { "NOT drained" },
            audit.summary()
        ),
    ];
    r.field("rate", args.rate);
    r.field("seconds", args.seconds);
    r.field("events", args.events);
    r.field("idle_p50_ms", idle_p50);
    r.field("idle_p99_ms", idle_p99);
    r.field("p50_ms", p50);
    r.field("p99_ms", p99);
    r.field(
        "p99_ratio",
        if idle_p99 > 0.0 { p99 / idle_p99 } else { 0.0 },
    );
    r.field("idle_answered_per_s", idle.outcome.rate());
    r.field("answered_per_s", behind.outcome.rate());
    r.field("failed", failed);
    r.field("dropped", dropped);
    r.field("max_lag", max_lag);
    r.field("worked_off_s", worked_off.as_secs_f64());
    r.field("worked_off_during_load", during.is_some());
    r.field("worked_off_per_s", worked_off_per_s);
    r.field("slowest_group", &slowest);
    r.field("drained", drained);
    r.field("audit_clean", audit.is_clean());
    r.field("audit_violations", audit.violations.len());
    r.field("peak_rss_bytes", peak);
    Ok(r)
}
