//! `dhanman bench api`: invoices posted through the real API (`POST /v1/invoices`, served
//! in this process on a database of its own) by the in-process load generator, as fast as
//! the API answers, against its raw limit: a bare axum handler doing one INSERT of the same
//! invoice row in its own transaction, on the same pool, under the same generator. Then
//! `POST /v1/invoices/batch` under the same load, counted in invoices, against its own raw
//! limit: a `COPY` of the rows its invoices write (the invoice, its `InvoiceCreated` and its
//! first email in the outbox, their queue entries) into tables made like the API's.
//!
//! The API's per-key rate limit (`DHANMAN_API_RATE_LIMIT`) is off in this process: the
//! benchmark measures what the API sustains, not what it is allowed to.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::common::{self, Common, Report, Row, ScratchDb};
use super::load::{self, Client, Invoices, Outcome};

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds each load runs (after a warm-up of up to a second).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Keep-alive connections of the load generator, each with one request in flight:
    /// enough that the server, not the generator's waiting, sets the rate.
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Customers the invoices are spread over.
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Connections of the database pool (that of `dhanman up` by default, `DHANMAN_DB_POOL`).
    #[arg(long, default_value_t = 10)]
    pub db_pool: u32,
    /// Invoices per `POST /v1/invoices/batch` (at most 1,000).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Connections of the batch load.
    #[arg(long, default_value_t = 4)]
    pub batch_connections: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let db = ScratchDb::create(args.common.database_url.expose_secret(), args.db_pool).await?;
    let measured = measure(&args, &db).await;
    db.drop().await;
    measured?.print(args.common.json);
    Ok(())
}

/// The invoice the baseline writes: the API's body, parsed by serde alone.
#[derive(Deserialize)]
struct BareInvoice {
    customer_id: Uuid,
    amount: Decimal,
    issue_date: NaiveDate,
    due_date: NaiveDate,
    period: Option<String>,
}

#[derive(Clone)]
struct Bare {
    pool: PgPool,
    organization_id: Uuid,
}

/// The raw limit: one INSERT of the invoice row in its own transaction; no key, no
/// idempotency record, no checks, no outbox.
async fn bare_invoice(
    State(bare): State<Bare>,
    axum::Json(invoice): axum::Json<BareInvoice>,
) -> Result<(StatusCode, axum::Json<Value>), StatusCode> {
    let id = Uuid::now_v7();
    let inserted = async {
        let mut tx = bare.pool.begin().await?;
        sqlx::query(
            "insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                                   currency, issue_date, due_date, description, period)
             values ($1, $2, $3, $4, $5, 'INR', $6, $7, null, $8)",
        )
        .bind(id)
        .bind(bare.organization_id)
        .bind(invoice.customer_id)
        .bind(format!("INV-{}", id.simple()))
        .bind(invoice.amount)
        .bind(invoice.issue_date)
        .bind(invoice.due_date)
        .bind(invoice.period)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    match inserted {
        Ok(()) => Ok((StatusCode::CREATED, axum::Json(json!({ "invoice_id": id })))),
        Err(e) => {
            tracing::warn!(error = %e, "baseline insert failed");
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

async fn serve(router: axum::Router) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service()).await;
    });
    Ok((base, task))
}

async fn measure(args: &Args, db: &ScratchDb) -> anyhow::Result<Report> {
    let pool = &db.pool;
    common::reset_peak_rss();
    let society = common::society(pool, args.customers).await?;
    let mut state = dhanman_api::AppState::new(pool.clone(), Duration::from_secs(5));
    state.rate_limit = None;
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_base = format!("http://{}", api_listener.local_addr()?);
    let api = tokio::spawn(dhanman_api::serve(api_listener, state));
    let bare = axum::Router::new()
        .route("/bare/invoices", post(bare_invoice))
        .with_state(Bare {
            pool: pool.clone(),
            organization_id: society.organization_id,
        });
    let (bare_base, bare_task) = serve(bare).await?;

    let result = loads(args, pool, &society, &api_base, &bare_base).await;
    api.abort();
    bare_task.abort();
    let (mut report, batch_invoices_per_s) = result?;
    // Invoices copied per run: forty batches' worth, dealt to as many sessions as the batch
    // load has connections, a transaction a batch.
    let size = args.batch_size.clamp(1, 1000);
    let n = size * 40;
    let parts = args.batch_connections.max(1);
    super::pipeline::status(&args.common, format!("raw COPY of {n} invoices' rows ..."));
    let raw_per_s = super::raw::per_s(&args.common, n, || {
        batch_raw_copy(&db.url, &society, n, size, parts)
    })
    .await?;
    if let Some(row) = report
        .rows
        .iter_mut()
        .find(|r| r.measure.contains("/batch"))
    {
        row.limit = Some(("raw COPY (its rows)".into(), raw_per_s));
    }
    report.notes.push(format!(
        "batch raw limit: COPY of the rows {n} of its invoices write (invoice, two outbox rows, \
         their queue entries) in {parts} concurrent sessions, a transaction a batch"
    ));
    report.field("batch_raw_copy_per_s", raw_per_s);
    report.field("batch_ratio_to_limit", batch_invoices_per_s / raw_per_s);
    Ok(report)
}

/// The tables a batch's invoices write rows into (`outbox_pending` is filled by the
/// outbox's trigger, so it comes before the outbox).
const BATCH_TABLES: [&str; 3] = ["invoices", "outbox_pending", "outbox"];

/// `COPY` of the rows `n` invoices of the batch load write (the invoice; its
/// `InvoiceCreated` and its first email in the outbox, each queued by the outbox's trigger),
/// made by the API's own functions from the load's bodies, into tables made as
/// [`super::raw::copy_like`] makes them, in `parts` concurrent parts, a transaction for each
/// `batch_size` invoices; returns the seconds the COPYs and the commits took. Not in it: the
/// customers' look-up, the idempotency key's row (one a batch), the foreign key to the
/// customer (`like` copies no foreign key).
async fn batch_raw_copy(
    url: &str,
    society: &common::Society,
    n: usize,
    batch_size: usize,
    parts: usize,
) -> anyhow::Result<f64> {
    use std::fmt::Write;

    use dhanman_plumbing::outbox;
    use dhanman_producers::invoice_email::first_email;
    use dhanman_producers::sales::{self, CreatedInvoice, NewInvoice};

    let caller = dhanman_producers::Caller {
        organization_id: society.organization_id,
        role: "admin".into(),
        user_id: None,
        correlation_id: "bench-raw".into(),
    };
    let invoices = Invoices::new(&society.customers);
    let mut texts = super::raw::Parts::new(parts, batch_size);
    for i in 0..n {
        // Batch after batch, the batches dealt to the parts in turn.
        let [rows, queued] = texts.next_event(i / batch_size);
        let body: NewInvoice = serde_json::from_value(invoices.item(i as u64))?;
        let checked = sales::check_invoice(body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let id = Uuid::now_v7();
        let number = checked.number(id);
        let event = sales::invoice_created(&caller, checked, id, number);
        let email = first_email(&caller, &CreatedInvoice::of(&event), None);
        let _ = writeln!(
            rows,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t\\N\t{}",
            event.invoice_id,
            society.organization_id,
            event.customer_id,
            event.invoice_number,
            event.amount,
            event.currency,
            event.issue_date,
            event.due_date,
            event.period.as_deref().unwrap_or("\\N"),
        );
        outbox::row(&event)?.copy_line(queued);
        outbox::row(&email)?.copy_line(queued);
    }
    let targets = [
        "invoices (id, organization_id, customer_id, invoice_number, amount, currency, issue_date, due_date, description, period)",
        &format!("outbox ({})", outbox::COPY_COLUMNS),
    ];
    super::raw::copy_like(url, &BATCH_TABLES, &targets, &texts).await
}

async fn loads(
    args: &Args,
    pool: &PgPool,
    society: &common::Society,
    api_base: &str,
    bare_base: &str,
) -> anyhow::Result<(Report, f64)> {
    let duration = Duration::from_secs(args.seconds.max(1));
    let warm_up = Duration::from_secs(1).min(duration);
    let invoices = Invoices::new(&society.customers);
    let api = Arc::new(Client::new(api_base, &society.api_key, args.connections)?);
    let bare = Arc::new(Client::new(bare_base, &society.api_key, args.connections)?);

    // Connections opened and statements prepared before anything is timed.
    let runs = args.common.runs();
    super::pipeline::status(&args.common, format!("warming up ({warm_up:?} each) ..."));
    let mut answered = 0;
    for (client, path) in [(&api, "/v1/invoices"), (&bare, "/bare/invoices")] {
        let warm = warm(&invoices, path);
        let o = load::closed_loop(client.clone(), args.connections, warm_up, warm, None).await;
        answered += o.ok;
    }

    let (mut commands, mut baseline, mut batch) = (Vec::new(), Vec::new(), Vec::new());
    let (mut api_outcomes, mut bare_outcomes) = (Outcome::default(), Outcome::default());
    for run in 1..=runs {
        // Every run's commands under keys of their own: a key used again would be answered
        // from its stored response, a replay instead of a command.
        let invoices = Invoices::new(&society.customers);
        super::pipeline::status(
            &args.common,
            format!(
                "run {run}/{runs}: {} connections, {duration:?} per load ...",
                args.connections
            ),
        );
        let single = singles(&invoices, "/v1/invoices");
        let o = load::closed_loop(api.clone(), args.connections, duration, single, None).await;
        commands.push(o.rate());
        answered += o.ok;
        merge(&mut api_outcomes, o);
        let single = singles(&invoices, "/bare/invoices");
        let o = load::closed_loop(bare.clone(), args.connections, duration, single, None).await;
        baseline.push(o.rate());
        answered += o.ok;
        merge(&mut bare_outcomes, o);
        let (rate, created) = batch_load(args, &invoices, api.clone(), duration).await?;
        batch.push(rate);
        answered += created;
    }
    // Each invoice answered as created was written by a command of its own: fewer rows
    // than answers means some answers were replays.
    let written = invoices_written(pool).await?;
    if written < answered as i64 {
        anyhow::bail!(
            "{answered} invoices answered as created but {written} written: some answers \
             replayed a key used before, the counts are not of distinct commands"
        );
    }
    let failed = api_outcomes.failed + bare_outcomes.failed;
    if api_outcomes.ok == 0 {
        anyhow::bail!(
            "no invoice was accepted: {}",
            api_outcomes.first_failure.unwrap_or_default()
        );
    }
    let api_latency = api_outcomes.sorted_latencies();
    let bare_latency = bare_outcomes.sorted_latencies();
    let commands_per_s = common::median(&commands);
    let baseline_per_s = common::median(&baseline);
    let batch_invoices_per_s = common::median(&batch);
    let peak = common::peak_rss_bytes(None).unwrap_or(0);

    let mut r = Report::new(
        "api",
        format!(
            "{} customers, {} connections, {} s per load, {} runs, pool {}",
            args.customers,
            args.connections,
            duration.as_secs(),
            runs,
            args.db_pool
        ),
    );
    r.rows = vec![
        Row::new("POST /v1/invoices", commands_per_s, "cmds/s")
            .against("bare INSERT handler", baseline_per_s),
        Row::new("  p50", common::percentile(&api_latency, 50.0), "ms")
            .against("bare p50", common::percentile(&bare_latency, 50.0)),
        Row::new("  p99", common::percentile(&api_latency, 99.0), "ms")
            .against("bare p99", common::percentile(&bare_latency, 99.0)),
        Row::new(
            format!("POST /v1/invoices/batch ({})", args.batch_size),
            batch_invoices_per_s,
            "inv/s",
        ),
        Row::new("peak RSS (this process)", peak as f64 / 1048576.0, "MiB"),
    ];
    r.notes = vec![
        "the API's per-key rate limit (DHANMAN_API_RATE_LIMIT) is off in this process".into(),
        "raw limit: a bare axum handler doing one INSERT of the same invoice row in its own \
         transaction, same pool, same load generator"
            .into(),
        format!(
            "rates are medians of {runs} runs; latencies over every run; failed requests: API {}, bare {}",
            api_outcomes.failed, bare_outcomes.failed
        ),
    ];
    if let Some(why) = &api_outcomes.first_failure {
        r.notes.push(format!("first API failure: {why}"));
    }
    r.field("commands_per_s", commands_per_s);
    r.field("p50_ms", common::percentile(&api_latency, 50.0));
    r.field("p99_ms", common::percentile(&api_latency, 99.0));
    r.field("baseline_per_s", baseline_per_s);
    r.field("ratio_to_baseline", commands_per_s / baseline_per_s);
    r.field("baseline_p50_ms", common::percentile(&bare_latency, 50.0));
    r.field("baseline_p99_ms", common::percentile(&bare_latency, 99.0));
    r.field("batch_invoices_per_s", batch_invoices_per_s);
    r.field("batch_size", args.batch_size);
    r.field("connections", args.connections);
    r.field("failed", failed);
    r.field("invoices_written", written);
    r.field("peak_rss_bytes", peak);
    Ok((r, batch_invoices_per_s))
}

/// Single invoices to `path`, each under a key of its own.
pub(super) fn singles(
    invoices: &Invoices,
    path: &'static str,
) -> Arc<dyn Fn(u64) -> load::Command + Send + Sync> {
    let invoices = invoices.clone();
    Arc::new(move |seq| invoices.single(path, seq))
}

async fn invoices_written(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from invoices")
        .fetch_one(pool)
        .await?)
}

/// Warm-up commands under keys of their own.
pub(super) fn warm(
    invoices: &Invoices,
    path: &'static str,
) -> Arc<dyn Fn(u64) -> load::Command + Send + Sync> {
    let invoices = invoices.clone();
    Arc::new(move |seq| {
        let mut c = invoices.single(path, seq);
        c.idempotency_key = format!("warm-{}", c.idempotency_key);
        c
    })
}

fn merge(into: &mut Outcome, o: Outcome) {
    into.ok += o.ok;
    into.failed += o.failed;
    into.seconds += o.seconds;
    into.latencies_ms.extend(o.latencies_ms);
    if into.first_failure.is_none() {
        into.first_failure = o.first_failure;
    }
}

/// Invoices/s created through the batch endpoint (items answered 201, per second), and
/// how many.
async fn batch_load(
    args: &Args,
    invoices: &Invoices,
    client: Arc<Client>,
    duration: Duration,
) -> anyhow::Result<(f64, usize)> {
    let size = args.batch_size.clamp(1, 1000);
    let make = {
        let invoices = invoices.clone();
        Arc::new(move |seq| invoices.batch(seq, size))
            as Arc<dyn Fn(u64) -> load::Command + Send + Sync>
    };
    /// What the count reads of a batch's answer (its results are skipped, not built).
    #[derive(serde::Deserialize)]
    struct Answered {
        created: usize,
    }
    let (sink, mut bodies): (load::Sink, _) = tokio::sync::mpsc::unbounded_channel();
    let counting = tokio::spawn(async move {
        let mut created = 0usize;
        while let Some((_, body)) = bodies.recv().await {
            if let Ok(answered) = serde_json::from_slice::<Answered>(&body) {
                created += answered.created;
            }
        }
        created
    });
    let outcome =
        load::closed_loop(client, args.batch_connections, duration, make, Some(sink)).await;
    let created = counting.await?;
    if created == 0 {
        anyhow::bail!(
            "no invoice was created through the batch endpoint: {}",
            outcome.first_failure.unwrap_or_default()
        );
    }
    Ok((created as f64 / outcome.seconds, created))
}
