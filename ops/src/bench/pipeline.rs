//! `dhanman bench pipeline` (and `dhanman bench` alone): fills a fresh topic pair with
//! invoice and payment events and measures, in the same run and on the same machine, the
//! raw limits and the pipeline:
//!
//! - raw consume: records/s a plain consumer reads the topics at, decoding nothing;
//! - raw COPY: events/s Postgres takes when the rows the ledger writes per event (a gate
//!   row, an entry, two postings, an announcement in the outbox and its place in the relay's
//!   queue) are `COPY`ed into tables
//!   with the same indexes, constraints and insert triggers as the pipeline's;
//! - pipeline: events/s the ledger processor turns into balanced postings and balances
//!   (decode, gate, entries, postings, balances, announcements, offsets);
//! - seed pattern: the per-event baseline (decode, two INSERTs, commit per message).
//!
//! Everything runs against a database created for the run and dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dhanman_schemas::events::{
    Envelope, InvoiceCreated, LedgerEntryPosted, PaymentReceived, PostingLine, Record,
};
use dhanman_schemas::{Codec, Event, topics};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

use super::common::{self, Common, CpuTimes, CpuUse, Report, Row, ScratchDb};
use super::raw;
use crate::calendar::Dates;

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Events to produce (half invoices, half payments).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    #[command(flatten)]
    pub shape: Shape,
}

/// How the pipeline is run (shared with `bench scaling`).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Shape {
    /// Events for the per-event seed baseline (it is slow; a sample suffices for a rate).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Batch size of the ledger processor (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_MAX_BATCH)]
    pub batch_size: usize,
    /// Concurrent transactions per batch (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_LANES)]
    pub lanes: usize,
}

/// A scratch database with the embedded registry served from this process, and a topic
/// pair (invoices, payments) under a prefix of the run's own.
pub struct Stage {
    pub db: ScratchDb,
    pub codec: Arc<Codec>,
    pub registry_url: String,
    pub prefix: String,
    pub topics: [String; 2],
    bootstrap: String,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Stage {
    pub async fn open(common: &Common, partitions: i32) -> anyhow::Result<Stage> {
        let db = ScratchDb::create(common.database_url.expose_secret(), 8).await?;
        let prefix = common::topic_prefix();
        match Self::serve(common, db, &prefix, partitions).await {
            Ok(stage) => Ok(stage),
            Err((db, e)) => {
                db.drop().await;
                Err(e)
            }
        }
    }

    async fn serve(
        common: &Common,
        db: ScratchDb,
        prefix: &str,
        partitions: i32,
    ) -> Result<Stage, (ScratchDb, anyhow::Error)> {
        let started = async {
            crate::register_local_schemas(&db.pool, prefix).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let registry_url = format!("http://{}/schema-registry", listener.local_addr()?);
            let state = dhanman_api::AppState::new(db.pool.clone(), Duration::from_secs(1));
            let api = tokio::spawn(dhanman_api::serve(listener, state));
            let codec = Arc::new(Codec::new(&registry_url)?.with_topic_prefix(prefix));
            let topics = [
                format!("{prefix}{}", topics::INVOICES),
                format!("{prefix}{}", topics::PAYMENTS),
            ];
            dhanman_connectors::kafka::ensure_topics(
                &common.kafka_bootstrap_servers,
                &topics,
                partitions,
            )
            .await?;
            anyhow::Ok((codec, registry_url, topics, api))
        }
        .await;
        match started {
            Ok((codec, registry_url, topics, api)) => Ok(Stage {
                db,
                codec,
                registry_url,
                prefix: prefix.to_string(),
                topics,
                bootstrap: common.kafka_bootstrap_servers.to_string(),
                api,
            }),
            Err(e) => Err((db, e)),
        }
    }

    /// Stops the registry, deletes the run's topics and groups, drops the database: a run
    /// leaves nothing behind, so the next one meets a broker in the same state.
    pub async fn close(self) -> anyhow::Result<()> {
        self.api.abort();
        let deleted = common::drop_topics_and_groups(&self.bootstrap, &self.prefix)
            .await
            .context("deleting the benchmark's topics");
        self.db.drop().await;
        deleted
    }
}

/// One pipeline run's numbers.
pub struct Measured {
    pub events: usize,
    pub produce_per_s: f64,
    pub raw_consume_per_s: f64,
    pub raw_copy_per_s: f64,
    pub pipeline_events: usize,
    pub pipeline_per_s: f64,
    pub seed_events: usize,
    pub seed_pattern_per_s: f64,
    /// The ledger processor's (`dhanman process ledger`).
    pub processor_peak_rss_bytes: u64,
    /// The machine's while the pipeline was timed.
    pub pipeline_cpu: Option<CpuUse>,
    /// This process's: the producer and the records it made, the raw measurements.
    pub bench_peak_rss_bytes: u64,
}

impl Measured {
    pub fn lower_limit(&self) -> f64 {
        self.raw_consume_per_s.min(self.raw_copy_per_s)
    }
    pub fn ratio_to_limit(&self) -> f64 {
        self.pipeline_per_s / self.lower_limit()
    }
    /// Busy CPU time of the whole machine per event while the pipeline was timed.
    pub fn cpu_us_per_event(&self) -> Option<f64> {
        self.pipeline_cpu
            .map(|c| c.busy_cpu_secs * 1e6 / self.pipeline_events as f64)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let measured = measure_once(&args.common, &args.shape, args.events).await?;
    let report = report(&args.common, &args.shape, &measured);
    report.print(args.common.json);
    Ok(())
}

/// A stage of its own, the measurements, the stage closed.
pub async fn measure_once(
    common: &Common,
    shape: &Shape,
    events: usize,
) -> anyhow::Result<Measured> {
    let stage = Stage::open(common, shape.partitions).await?;
    let measured = measure(common, shape, &stage, events).await;
    let closed = stage.close().await;
    let measured = measured?;
    closed?;
    Ok(measured)
}

fn report(common: &Common, shape: &Shape, m: &Measured) -> Report {
    let mut r = Report::new(
        "pipeline",
        format!(
            "{} events, {} partitions, batch {}, {} lanes, produce {:.0} events/s",
            m.events, shape.partitions, shape.batch_size, shape.lanes, m.produce_per_s
        ),
    );
    let lower = m.lower_limit();
    r.rows = vec![
        Row::new("raw consume (records)", m.raw_consume_per_s, "/s")
            .against("lower raw limit", lower),
        Row::new("raw COPY (events' rows)", m.raw_copy_per_s, "events/s")
            .against("lower raw limit", lower),
        Row::new(
            "pipeline (postings + balances)",
            m.pipeline_per_s,
            "events/s",
        )
        .against("lower raw limit", lower),
        Row::new("seed pattern (per event)", m.seed_pattern_per_s, "events/s")
            .against("lower raw limit", lower),
        Row::new(
            "machine CPU per event (every process)",
            m.cpu_us_per_event().unwrap_or(f64::NAN),
            "us",
        ),
        Row::new(
            "CPU stolen by the hypervisor (pipeline)",
            m.pipeline_cpu.map_or(f64::NAN, |c| c.steal_share * 100.0),
            "%",
        ),
        Row::new(
            "peak RSS (dhanman process ledger)",
            m.processor_peak_rss_bytes as f64 / 1048576.0,
            "MiB",
        ),
        Row::new(
            "peak RSS (this process)",
            m.bench_peak_rss_bytes as f64 / 1048576.0,
            "MiB",
        ),
    ];
    r.notes = vec![
        format!(
            "raw COPY: per event a journal entry (its own gate), two postings and an outbox row \
             (queued for the relay by the outbox's trigger), \
             COPYed into tables with the pipeline's indexes, constraints and insert triggers \
             (balances are upserts, not COPYable, and left out)"
        ),
        format!(
            "pipeline vs seed pattern: {:.1} x; target for the pipeline: >= 0.5 x the lower raw limit",
            m.pipeline_per_s / m.seed_pattern_per_s
        ),
        format!(
            "raw rates are medians of {} runs; pipeline and seed are single runs over {} and {} events",
            common.runs(),
            m.pipeline_events,
            m.seed_events
        ),
        "the pipeline runs `dhanman process ledger` as a child process; this process's peak \
         RSS is the producer's and the records it made"
            .into(),
        "machine CPU and steal: /proc/stat over the pipeline's timed part; on a shared host \
         the rate moves with the CPU stolen: compare runs with little stolen"
            .into(),
    ];
    r.field("events", m.events);
    r.field("pipeline_per_s", m.pipeline_per_s);
    r.field("raw_consume_per_s", m.raw_consume_per_s);
    r.field("raw_copy_per_s", m.raw_copy_per_s);
    r.field("seed_pattern_per_s", m.seed_pattern_per_s);
    r.field("ratio_to_limit", m.ratio_to_limit());
    r.field("peak_rss_bytes", m.processor_peak_rss_bytes);
    r.field("bench_peak_rss_bytes", m.bench_peak_rss_bytes);
    if let (Some(per_event), Some(cpu)) = (m.cpu_us_per_event(), m.pipeline_cpu) {
        r.field("cpu_us_per_event", per_event);
        r.field("steal_share", cpu.steal_share);
    }
    r.field("produce_per_s", m.produce_per_s);
    r
}

async fn measure(
    common: &Common,
    shape: &Shape,
    stage: &Stage,
    events: usize,
) -> anyhow::Result<Measured> {
    common::reset_peak_rss();
    let pool = &stage.db.pool;
    let (org, (records, produce_secs)) = fill(common, stage, events).await?;
    let bootstrap = &common.kafka_bootstrap_servers;
    let raw_consume_per_s = raw::consume_per_s(common, stage, records).await?;
    let raw_copy_per_s = raw::per_s(common, records, || {
        raw_copy(&stage.db.url, org, records, shape.batch_size, shape.lanes)
    })
    .await?;

    status(
        common,
        format!("running the ledger processor over {records} events ..."),
    );
    let applied = run_pipeline(shape, stage, bootstrap, records).await?;
    check_books(pool, org, records).await?;

    let sample = shape.baseline_events.min(records).max(1);
    status(
        common,
        format!("running the per-event seed pattern over {sample} events ..."),
    );
    let seed_secs = seed_pattern(
        bootstrap,
        &stage.prefix,
        pool,
        &stage.codec,
        &stage.topics,
        sample,
    )
    .await?;
    Ok(Measured {
        events: records,
        produce_per_s: records as f64 / produce_secs,
        raw_consume_per_s,
        raw_copy_per_s,
        pipeline_events: applied.events,
        pipeline_per_s: applied.events as f64 / applied.secs,
        processor_peak_rss_bytes: applied.peak_rss_bytes,
        pipeline_cpu: applied.cpu,
        seed_events: sample,
        seed_pattern_per_s: sample as f64 / seed_secs,
        bench_peak_rss_bytes: common::peak_rss_bytes(None).unwrap_or(0),
    })
}

/// Progress on stderr (quiet with `--json`).
pub fn status(common: &Common, line: String) {
    if !common.json {
        eprintln!("{line}");
    }
}

/// An organization, and `events` records produced to the stage's topics; returns the
/// organization and (records, seconds the producing took).
pub async fn fill(
    common: &Common,
    stage: &Stage,
    events: usize,
) -> anyhow::Result<(Uuid, (usize, f64))> {
    let org = organization(stage).await?;
    let records = make_records(&stage.codec, org, events).await?;
    let secs = produce_to(common, stage, &records).await?;
    Ok((org, (records.len(), secs)))
}

/// The organization a run's events belong to, made as `dhanman orgs create` makes one.
pub async fn organization(stage: &Stage) -> anyhow::Result<Uuid> {
    let org =
        dhanman_producers::orgs::create_organization(&stage.db.pool, "Benchmark Society", None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(org.organization_id)
}

/// Produces `records` (invoices or not, key, value) to the stage's topics; returns the
/// seconds it took.
pub async fn produce_to(
    common: &Common,
    stage: &Stage,
    records: &[(bool, String, Vec<u8>)],
) -> anyhow::Result<f64> {
    let [invoices, payments] = &stage.topics;
    status(
        common,
        format!(
            "producing {} events to {invoices} and {payments} ...",
            records.len()
        ),
    );
    produce(&common.kafka_bootstrap_servers, invoices, payments, records).await
}

/// Encoded records: invoices and payments for 1,000 residents, alternating.
pub async fn make_records(
    codec: &Codec,
    org: Uuid,
    n: usize,
) -> anyhow::Result<Vec<(bool, String, Vec<u8>)>> {
    let customers: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    encode(codec, &Events::of(org, &customers, n)?).await
}

/// Invoices and payments of a list of customers in turn, alternating (an invoice first).
pub enum Events {
    Invoice(InvoiceCreated),
    Payment(PaymentReceived),
}

impl Events {
    pub fn of(org: Uuid, customers: &[Uuid], n: usize) -> anyhow::Result<Vec<Events>> {
        anyhow::ensure!(!customers.is_empty(), "no customers to make events for");
        let dates = Dates::today();
        Ok((0..n)
            .map(|i| {
                let customer = customers[i % customers.len()];
                let amount = Decimal::new(100_000 + (i as i64 % 5000), 2);
                let envelope = Envelope::new(org, &format!("bench-{i}"), None);
                if i % 2 == 0 {
                    Events::Invoice(InvoiceCreated {
                        envelope,
                        invoice_id: Uuid::now_v7(),
                        customer_id: customer,
                        invoice_number: format!("B-{i}"),
                        amount,
                        currency: "INR".into(),
                        issue_date: dates.issue,
                        due_date: dates.due,
                        description: None,
                        period: Some(dates.period.clone()),
                        tax_amount: None,
                    })
                } else {
                    Events::Payment(PaymentReceived {
                        envelope,
                        payment_id: Uuid::now_v7(),
                        invoice_id: None,
                        customer_id: customer,
                        amount,
                        currency: "INR".into(),
                        method: "upi".into(),
                        reference: None,
                    })
                }
            })
            .collect())
    }
}

/// [`Events`] as records: (invoice or not, key, value).
pub async fn encode(
    codec: &Codec,
    events: &[Events],
) -> anyhow::Result<Vec<(bool, String, Vec<u8>)>> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        out.push(match event {
            Events::Invoice(e) => (true, e.key(), codec.encode(e).await?),
            Events::Payment(e) => (false, e.key(), codec.encode(e).await?),
        });
    }
    Ok(out)
}

pub async fn produce(
    bootstrap: &str,
    invoices: &str,
    payments: &str,
    records: &[(bool, String, Vec<u8>)],
) -> anyhow::Result<f64> {
    let producer = dhanman_plumbing::kafka::idempotent_producer(bootstrap)?;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(records.len());
    for (is_invoice, key, value) in records {
        let topic = if *is_invoice { invoices } else { payments };
        let mut record = FutureRecord::to(topic).key(key).payload(value);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
    for f in pending {
        f.await
            .context("delivery canceled")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The tables the ledger writes a row (or two) per event into: no gate row, as an event
/// that posts is gated by its entry. (`outbox_pending` is filled by the outbox's trigger,
/// so it comes before the outbox.)
const PER_EVENT_TABLES: [&str; 4] = ["journal_entries", "postings", "outbox_pending", "outbox"];

/// `COPY` of the rows the ledger writes for `n` events (an entry, its own gate; two
/// postings; an announcement) into tables made as [`raw::copy_like`] makes them, in `lanes`
/// concurrent parts as the ledger's lanes write them, each committing its share of a batch
/// of `batch_size`; returns the seconds the COPYs and the commits took.
async fn raw_copy(
    url: &str,
    org: Uuid,
    n: usize,
    batch_size: usize,
    lanes: usize,
) -> anyhow::Result<f64> {
    use std::fmt::Write;
    let mut parts = raw::Parts::lane_shares(lanes, batch_size, 1);
    for i in 0..n {
        let [entries, postings, outbox] = parts.next_event(i);
        let event = Uuid::now_v7();
        let customer = Uuid::now_v7();
        let amount = format!("{}.{:02}", 1000 + i % 5000, i % 100);
        let _ = writeln!(
            entries,
            "{event}\t{org}\t{event}\tinvoice\t{customer}\tInvoice B-{i}\tINR\t2026-12-01 00:00:00+00\tbench-{i}"
        );
        let _ = writeln!(
            postings,
            "{event}\t{org}\t1200\tcustomer\t{customer}\t{amount}\t0"
        );
        let _ = writeln!(postings, "{event}\t{org}\t4000\t\\N\t\\N\t0\t{amount}");
        // The announcement as the ledger writes it: its headers and the record's Avro datum.
        let id = Uuid::now_v7();
        let amount: Decimal = amount.parse()?;
        let line = |code: &str, party: Option<Uuid>, debit, credit| PostingLine {
            account_code: code.to_string(),
            party_type: party.map(|_| "customer".to_string()),
            party_id: party,
            debit,
            credit,
        };
        let record = LedgerEntryPosted {
            envelope: Envelope {
                event_id: id,
                occurred_at: chrono::DateTime::from_timestamp_millis(1_796_083_200_000)
                    .unwrap_or_default(),
                organization_id: org,
                correlation_id: format!("bench-{i}"),
                causation_id: Some(event.to_string()),
            },
            entry_id: event,
            source_event_id: event,
            reference_type: "invoice".to_string(),
            reference_id: customer,
            description: format!("Invoice B-{i}"),
            currency: "INR".to_string(),
            lines: vec![
                line("1200", Some(customer), amount, Decimal::ZERO),
                line("4000", None, Decimal::ZERO, amount),
            ],
        };
        dhanman_plumbing::outbox::avro_row(&record)?
            .announcing(event)
            .copy_line(outbox);
    }
    let targets = [
        "journal_entries (id, organization_id, source_event_id, reference_type, reference_id, description, currency, occurred_at, correlation_id)",
        "postings (entry_id, organization_id, account_code, party_type, party_id, debit, credit)",
        &format!("outbox ({})", dhanman_plumbing::outbox::COPY_COLUMNS),
    ];
    raw::copy_like(url, &PER_EVENT_TABLES, &targets, &parts).await
}

/// What a processor did over the topics.
pub struct Applied {
    /// Events timed (those of the first batch are not, unless it held them all).
    pub events: usize,
    pub secs: f64,
    /// The processor process's peak resident set.
    pub peak_rss_bytes: u64,
    /// The machine's CPU over the same time.
    pub cpu: Option<CpuUse>,
}

/// Runs the ledger processor over the topics ([`run_processor`]).
pub async fn run_pipeline(
    shape: &Shape,
    stage: &Stage,
    bootstrap: &str,
    expected: usize,
) -> anyhow::Result<Applied> {
    let deployed = Deployed {
        processor: "ledger",
        batch_size: shape.batch_size,
        lanes: shape.lanes,
    };
    run_processor(&deployed, stage, bootstrap, expected).await
}

/// A moment of a run: when, and the machine's CPU time by then.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: Option<CpuTimes>,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: CpuTimes::now(),
        }
    }
}

/// A processor as a run deploys it.
pub struct Deployed<'a> {
    /// As `dhanman process` names it.
    pub processor: &'a str,
    pub batch_size: usize,
    pub lanes: usize,
}

/// Runs a processor over the topics as it is deployed: `dhanman process <name>` (this
/// executable) as a child process on the run's database, topic prefix and registry, so
/// that its memory is its own (read from `/proc`). Timing starts once the first batch is
/// in, so starting the process and joining the consumer group are not counted; it ends
/// when the group's stored offsets reach the end of the topics.
pub async fn run_processor(
    deployed: &Deployed<'_>,
    stage: &Stage,
    bootstrap: &str,
    expected: usize,
) -> anyhow::Result<Applied> {
    let pool = &stage.db.pool;
    let name = deployed.processor;
    let group = format!("{}dhanman.{name}", stage.prefix);
    let log = std::env::temp_dir().join(format!("dhanman-bench-{}{name}.log", stage.prefix));
    let mut child =
        tokio::process::Command::new(std::env::current_exe().context("finding this executable")?)
            .args(["process", name])
            .env("DHANMAN_DATABASE_URL", &stage.db.url)
            .env("DHANMAN_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("DHANMAN_SCHEMA_REGISTRY_URL", &stage.registry_url)
            .env("DHANMAN_TOPIC_PREFIX", &stage.prefix)
            .env("DHANMAN_BATCH_SIZE", deployed.batch_size.to_string())
            .env("DHANMAN_LANES", deployed.lanes.to_string())
            .env_remove("DHANMAN_METRICS_ADDR")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting dhanman process {name}"))?;
    let started = Mark::now();
    let mut first: Option<(Mark, usize)> = None;
    loop {
        // Progress from the group's stored offsets (a row per partition, committed with each
        // batch): one record per event, so their sum counts the events applied. Counting the
        // growing gate table instead would load Postgres while it is being measured.
        let (done,): (i64,) = sqlx::query_as(
            "select coalesce(sum(next_offset), 0)::int8 from consumer_offsets where group_id = $1",
        )
        .bind(&group)
        .fetch_one(pool)
        .await?;
        let done = done as usize;
        if done > 0 && first.is_none() {
            first = Some((Mark::now(), done));
        }
        if done >= expected {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the {name} processor exited early ({status}); log: {}",
                log.display()
            );
        }
        if started.at.elapsed() > Duration::from_secs(1800) {
            bail!("pipeline did not finish in 30 minutes ({done}/{expected})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = Mark::now();
    let peak_rss_bytes = common::peak_rss_bytes(child.id()).unwrap_or(0);
    // Stopped as an operator stops it (SIGTERM: out of its group, closed), before the
    // topics are deleted, so that it does not fetch topics that are gone.
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => bail!(
            "the {name} processor stopped with {status}; log: {}",
            log.display()
        ),
        Ok(Err(e)) => return Err(e).with_context(|| format!("waiting for the {name} processor")),
        Err(_) => {
            let _ = child.kill().await;
            bail!("the {name} processor did not stop within 40 s of SIGTERM");
        }
    }
    let _ = std::fs::remove_file(&log);
    let (first, n0) = first.context("no progress observed")?;
    // All in the first batch (a small run): timed from the start, the start included.
    let (events, from) = if n0 >= expected {
        (expected, started)
    } else {
        (expected - n0, first)
    };
    let secs = (finished.at - from.at).as_secs_f64();
    let cpu = from
        .cpu
        .zip(finished.cpu)
        .and_then(|(from, to)| to.since(from, secs));
    Ok(Applied {
        events,
        secs,
        peak_rss_bytes,
        cpu,
    })
}

/// The books after the run: one entry per event, two postings each, balanced.
pub async fn check_books(pool: &PgPool, org: Uuid, events: usize) -> anyhow::Result<()> {
    let (entries, postings, debits, credits): (i64, i64, Decimal, Decimal) = sqlx::query_as(
        "select (select count(*) from journal_entries where organization_id = $1),
                count(*), coalesce(sum(debit), 0), coalesce(sum(credit), 0)
           from postings where organization_id = $1",
    )
    .bind(org)
    .fetch_one(pool)
    .await?;
    if entries as usize != events || postings as usize != 2 * events || debits != credits {
        bail!(
            "books are wrong: {entries} entries, {postings} postings, debits {debits}, credits {credits}"
        );
    }
    Ok(())
}

/// The seed's pattern: for each message, decode, INSERT the entry, INSERT the postings,
/// commit. Into tables of the same shape, so the numbers compare.
async fn seed_pattern(
    bootstrap: &str,
    prefix: &str,
    pool: &PgPool,
    codec: &Codec,
    topics: &[String],
    n: usize,
) -> anyhow::Result<f64> {
    pool.execute(
        "create table seed_entries (id uuid primary key, organization_id uuid, source_event_id uuid unique, description text);
         create table seed_postings (id bigserial primary key, entry_id uuid references seed_entries(id), account_code text, party_id uuid, debit numeric(18,2), credit numeric(18,2))",
    )
    .await?;
    let consumer: StreamConsumer = dhanman_plumbing::kafka::client_config(bootstrap)
        .set("group.id", format!("{prefix}seed-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    // Timing starts at the first record: joining the group is not the pattern's cost.
    let mut start = None;
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("seed consumer stalled")??;
        start.get_or_insert_with(Instant::now);
        let decoded = codec.decode(m.payload().unwrap_or_default()).await?;
        let event = Event::from_json(&decoded.name, decoded.json)?;
        let Some(entry) = dhanman_processors::ledger::entry_for(&event) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        sqlx::query("insert into seed_entries (id, organization_id, source_event_id, description) values ($1, $2, $3, $4) on conflict do nothing")
            .bind(entry.id)
            .bind(entry.source.organization_id)
            .bind(entry.source.event_id)
            .bind(&entry.description)
            .execute(&mut *tx)
            .await?;
        let (dr, cr) = (&entry.lines[0], &entry.lines[1]);
        sqlx::query("insert into seed_postings (entry_id, account_code, party_id, debit, credit) values ($1, $2, $3, $4, $5), ($1, $6, $7, $8, $9)")
            .bind(entry.id)
            .bind(&dr.account_code)
            .bind(dr.party_id)
            .bind(dr.debit)
            .bind(dr.credit)
            .bind(&cr.account_code)
            .bind(cr.party_id)
            .bind(cr.debit)
            .bind(cr.credit)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(start.context("no record read")?.elapsed().as_secs_f64())
}
