//! `dhanman bench`: fills a fresh topic pair with invoice and payment events and measures,
//! in the same run and on the same machine, the raw limits and the pipeline:
//!
//! - raw consume: records/s a plain consumer reads the topics at, decoding nothing;
//! - raw COPY: posting rows/s Postgres takes through `COPY` into a table without indexes;
//! - pipeline: events/s the ledger processor turns into balanced postings and balances
//!   (decode, gate, entries, postings, balances, announcements, offsets);
//! - seed pattern: the per-event baseline (decode, two INSERTs, commit per message).
//!
//! Everything runs against a database created for the run and dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use dhanman_processors::ledger::Ledger;
use dhanman_processors::{Runtime, RuntimeConfig};
use dhanman_schemas::events::{Envelope, InvoiceCreated, PaymentReceived, Record};
use dhanman_schemas::{Codec, Event};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, TopicPartitionList};
use rust_decimal::Decimal;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to produce (half invoices, half payments).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events for the per-event seed baseline (it is slow; a sample suffices for a rate).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: usize,
    /// Repetitions of the raw measurements; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka_bootstrap_servers: String,
    /// Batch size of the ledger processor (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_MAX_BATCH)]
    pub batch_size: usize,
    /// Concurrent transactions per batch (the pipeline's default).
    #[arg(long, default_value_t = dhanman_processors::runtime::DEFAULT_LANES)]
    pub lanes: usize,
}

struct Measure {
    name: &'static str,
    count: usize,
    seconds: Vec<f64>,
}

impl Measure {
    fn median_seconds(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }
    fn rate(&self) -> f64 {
        self.count as f64 / self.median_seconds()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let suffix = Uuid::now_v7().simple().to_string();
    let db_name = format!("dhanman_bench_{}", &suffix[suffix.len() - 12..]);
    let admin = PgPool::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("create database {db_name}")))
        .await?;
    let result = bench_in(&args, &db_name, &suffix).await;
    // Let the pool go before dropping the database.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "drop database if exists {db_name} with (force)"
        )))
        .await?;
    result
}

fn database_url_for(base: &str, db_name: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(base).context("DATABASE_URL is not a URL")?;
    url.set_path(db_name);
    Ok(url.to_string())
}

async fn bench_in(args: &Args, db_name: &str, suffix: &str) -> anyhow::Result<()> {
    let url = database_url_for(&args.database_url, db_name)?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    crate::migrate(&pool).await?;
    crate::register_local_schemas(&pool, "").await?;

    // The embedded registry, served on an ephemeral port for the codec.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let registry = format!("http://{}/schema-registry", listener.local_addr()?);
    let state = dhanman_api::AppState::new(pool.clone(), Duration::from_secs(1));
    let api = tokio::spawn(dhanman_api::serve(listener, state));
    let codec = Arc::new(Codec::new(&registry)?);

    let invoices = format!("bench.{suffix}.invoices");
    let payments = format!("bench.{suffix}.payments");
    dhanman_connectors::kafka::ensure_topics(
        &args.kafka_bootstrap_servers,
        &[invoices.clone(), payments.clone()],
        args.partitions,
    )
    .await?;
    let topics = [invoices.clone(), payments.clone()];
    let measured = measure(args, &pool, &codec, &topics, suffix).await;
    api.abort();
    // The broker keeps what it is given: a run leaves nothing behind, so the next one meets
    // a broker in the same state.
    let deleted = dhanman_connectors::kafka::delete_topics(&args.kafka_bootstrap_servers, &topics)
        .await
        .context("deleting the benchmark's topics");
    measured.and(deleted)
}

async fn measure(
    args: &Args,
    pool: &PgPool,
    codec: &Arc<Codec>,
    topics: &[String; 2],
    suffix: &str,
) -> anyhow::Result<()> {
    let [invoices, payments] = topics;
    let org = dhanman_producers::orgs::create_organization(pool, "Benchmark Society", None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let records = make_records(codec, org.organization_id, args.events).await?;
    eprintln!(
        "producing {} events to {invoices} and {payments} ...",
        records.len()
    );
    let produce_secs = produce(&args.kafka_bootstrap_servers, invoices, payments, &records).await?;

    let mut consume = Measure {
        name: "raw consume (records)",
        count: records.len(),
        seconds: Vec::new(),
    };
    for _ in 0..args.runs.max(1) {
        consume
            .seconds
            .push(raw_consume(&args.kafka_bootstrap_servers, topics, records.len()).await?);
    }
    let mut copy = Measure {
        name: "raw COPY (posting rows)",
        count: records.len(),
        seconds: Vec::new(),
    };
    for _ in 0..args.runs.max(1) {
        copy.seconds.push(raw_copy(pool, records.len()).await?);
    }

    eprintln!(
        "running the ledger processor over {} events ...",
        records.len()
    );
    let (counted, secs) = run_pipeline(args, pool, codec, topics, suffix, records.len()).await?;
    let pipeline = Measure {
        name: "pipeline (postings + balances)",
        count: counted,
        seconds: vec![secs],
    };
    check_books(pool, org.organization_id, records.len()).await?;

    let sample = args.baseline_events.min(records.len());
    eprintln!("running the per-event seed pattern over {sample} events ...");
    let seed = Measure {
        name: "seed pattern (per event)",
        count: sample,
        seconds: vec![
            seed_pattern(&args.kafka_bootstrap_servers, pool, codec, topics, sample).await?,
        ],
    };

    let lower = consume.rate().min(copy.rate());
    println!();
    println!(
        "dhanman bench: {} events, {} partitions, batch {}, {} lanes, produce {:.0} events/s",
        records.len(),
        args.partitions,
        args.batch_size,
        args.lanes,
        records.len() as f64 / produce_secs
    );
    println!(
        "{:<32} {:>9} {:>9} {:>12} {:>14}",
        "measure", "count", "seconds", "per second", "x lower limit"
    );
    for m in [&consume, &copy, &pipeline, &seed] {
        println!(
            "{:<32} {:>9} {:>9.2} {:>12.0} {:>14.2}",
            m.name,
            m.count,
            m.median_seconds(),
            m.rate(),
            m.rate() / lower
        );
    }
    println!(
        "lower raw limit: {:.0}/s; target for the pipeline: >= 0.5 x; pipeline vs seed pattern: {:.1} x",
        lower,
        pipeline.rate() / seed.rate()
    );
    if args.runs > 1 {
        println!(
            "raw rows are medians of {} runs; pipeline and seed are single runs",
            args.runs
        );
    }
    Ok(())
}

/// Encoded records: invoices and payments for 1,000 residents, alternating.
async fn make_records(
    codec: &Codec,
    org: Uuid,
    n: usize,
) -> anyhow::Result<Vec<(bool, String, Vec<u8>)>> {
    let customers: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    let issue = NaiveDate::from_ymd_opt(2026, 12, 1).context("date")?;
    let due = NaiveDate::from_ymd_opt(2026, 12, 10).context("date")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let customer = customers[i % customers.len()];
        let amount = Decimal::new(100_000 + (i as i64 % 5000), 2);
        let envelope = Envelope::new(org, &format!("bench-{i}"), None);
        if i % 2 == 0 {
            let e = InvoiceCreated {
                envelope,
                invoice_id: Uuid::now_v7(),
                customer_id: customer,
                invoice_number: format!("B-{i}"),
                amount,
                currency: "INR".into(),
                issue_date: issue,
                due_date: due,
                description: None,
                period: Some("2026-12".into()),
                tax_amount: None,
            };
            out.push((true, e.key(), codec.encode(&e).await?));
        } else {
            let e = PaymentReceived {
                envelope,
                payment_id: Uuid::now_v7(),
                invoice_id: None,
                customer_id: customer,
                amount,
                currency: "INR".into(),
                method: "upi".into(),
                reference: None,
            };
            out.push((false, e.key(), codec.encode(&e).await?));
        }
    }
    Ok(out)
}

async fn produce(
    bootstrap: &str,
    invoices: &str,
    payments: &str,
    records: &[(bool, String, Vec<u8>)],
) -> anyhow::Result<f64> {
    let producer = dhanman_connectors::kafka::idempotent_producer(bootstrap)?;
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

/// Reads every record of the topics from the beginning, touching only the payload length.
async fn raw_consume(bootstrap: &str, topics: &[String], expected: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = dhanman_connectors::kafka::client_config(bootstrap)
        .set("group.id", format!("bench-raw-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < expected {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("raw consume stalled for 30 s")??;
        bytes += m.payload_len();
        seen += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    tracing::debug!(bytes, "raw consume done");
    Ok(secs)
}

/// COPY of `n` posting-shaped rows into a fresh table without indexes or triggers.
async fn raw_copy(pool: &PgPool, n: usize) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    conn.execute("drop table if exists bench_copy; create table bench_copy (entry_id uuid, organization_id uuid, account_code text, party_type text, party_id uuid, debit numeric(18,2), credit numeric(18,2))").await?;
    let org = Uuid::now_v7();
    let mut data = String::with_capacity(n * 140);
    for i in 0..n {
        use std::fmt::Write;
        let _ = writeln!(
            data,
            "{}\t{org}\t1200\tcustomer\t{}\t{}.{:02}\t0",
            Uuid::now_v7(),
            Uuid::now_v7(),
            1000 + i % 5000,
            i % 100
        );
    }
    let start = Instant::now();
    let mut copy = conn.copy_in_raw("copy bench_copy from stdin").await?;
    copy.send(data.as_bytes()).await?;
    let rows = copy.finish().await?;
    let secs = start.elapsed().as_secs_f64();
    if rows as usize != n {
        bail!("COPY wrote {rows} rows, expected {n}");
    }
    conn.execute("drop table bench_copy").await?;
    Ok(secs)
}

/// Runs the ledger processor over the topics; returns (events timed, seconds). Timing
/// starts once the first batch is in, so joining the consumer group is not counted.
async fn run_pipeline(
    args: &Args,
    pool: &PgPool,
    codec: &Arc<Codec>,
    topics: &[String],
    suffix: &str,
    expected: usize,
) -> anyhow::Result<(usize, f64)> {
    let group = format!("bench-ledger-{suffix}");
    let mut config = RuntimeConfig::new(&args.kafka_bootstrap_servers);
    config.group_id = Some(group.clone());
    config.max_batch = args.batch_size;
    config.lanes = args.lanes;
    let runtime = Runtime::new(
        Ledger::with_topics(topics.to_vec()),
        pool.clone(),
        codec.clone(),
        config,
    );
    let stopper = dhanman_processors::Stopper::default();
    let task = tokio::spawn(runtime.run_until(stopper.signal()));
    let started = Instant::now();
    let mut first: Option<(Instant, usize)> = None;
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
            first = Some((Instant::now(), done));
        }
        if done >= expected {
            break;
        }
        if task.is_finished() {
            bail!("the ledger processor stopped early");
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("pipeline did not finish in 30 minutes ({done}/{expected})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Out of its group and closed before the topics are deleted, so that it does not
    // fetch (and log errors about) topics that are gone.
    stopper.stop();
    task.await
        .context("the ledger processor task")?
        .context("the ledger processor")?;
    let (t0, n0) = first.context("no progress observed")?;
    Ok((expected - n0, t0.elapsed().as_secs_f64()))
}

/// The books after the run: one entry per event, two postings each, balanced.
async fn check_books(pool: &PgPool, org: Uuid, events: usize) -> anyhow::Result<()> {
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
    let consumer: StreamConsumer = dhanman_connectors::kafka::client_config(bootstrap)
        .set("group.id", format!("bench-seed-{}", Uuid::now_v7()))
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
