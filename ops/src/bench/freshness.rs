//! `dhanman bench freshness`: invoices at a fixed rate through the API of `dhanman up` for a
//! fixed time; for each, the time from the API's 201 until the customer's balance, read
//! through the API with the command's consistency token (`?consistent_with=`: the read
//! waits until the ledger has applied that event), answers. The raw limit beside it is the
//! same read without a token (the round trip of a balance read that waits for nothing).
//! Commands of the first `--warm-up` seconds, at the same rate, are not measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use super::common::{self, Common, Report, Row};
use super::deployed::{Deployed, Deployment};
use super::load::{self, Client, Invoices};

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Commands per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds the commands are sent for.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Seconds of commands at the same rate before, not measured (connections opened,
    /// statements prepared, every consumer group joined).
    #[arg(long, default_value_t = 3)]
    pub warm_up: u64,
    /// Most commands in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[command(flatten)]
    pub deployment: Deployment,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    Deployed::measure_and_print(&args.common, &args.deployment, async |deployed| {
        measure(&args, deployed).await
    })
    .await
}

/// Polls the balance with the token until it answers 200; the API itself waits up to its
/// consistency wait per request, so this loops only past that.
async fn reflected(client: &Client, customer: &str, token: &str) -> anyhow::Result<()> {
    let url = client.url(&format!(
        "/v1/customers/{customer}/balance?consistent_with={token}"
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = client
            .http()
            .get(&url)
            .bearer_auth(client.key())
            .send()
            .await;
        if let Ok(reply) = reply {
            if reply.status().is_success() {
                return Ok(());
            }
            let status = reply.status();
            if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                anyhow::bail!("balance read refused: {status}");
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the balance did not reflect {token} within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn measure(args: &Args, deployed: &Deployed) -> anyhow::Result<Report> {
    let society = deployed.society(args.deployment.customers).await?;
    let invoices = Invoices::new(&society.customers);
    let commands = deployed.client(&society, args.connections)?;
    let readers = deployed.client(&society, 256)?;
    let make = super::api::singles(&invoices, "/v1/invoices");
    let duration = Duration::from_secs(args.seconds.max(1));
    super::pipeline::status(
        &args.common,
        format!("{} commands/s for {duration:?} ...", args.rate),
    );

    load::open_loop(
        commands.clone(),
        args.connections,
        f64::from(args.rate),
        Duration::from_secs(args.warm_up),
        super::api::warm(&invoices, "/v1/invoices"),
        None,
    )
    .await;

    let (sink, mut answered): (load::Sink, _) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let measured_from = chrono::Utc::now();
    let freshness = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers_done = {
        let (readers, freshness, failures) = (readers.clone(), freshness.clone(), failures.clone());
        tokio::spawn(async move {
            // No more reads wait at once than the API lets wait (past that it answers 503).
            let in_flight = Arc::new(Semaphore::new(dhanman_api::consistency::MAX_WAITERS));
            let mut polls = tokio::task::JoinSet::new();
            while let Some((at, body)) = answered.recv().await {
                let Created {
                    customer_id: customer,
                    consistency_token: token,
                } = serde_json::from_slice(&body).unwrap_or_default();
                let (readers, freshness, failures, in_flight) = (
                    readers.clone(),
                    freshness.clone(),
                    failures.clone(),
                    in_flight.clone(),
                );
                polls.spawn(async move {
                    let _permit = in_flight.acquire_owned().await;
                    match reflected(&readers, &customer, &token).await {
                        Ok(()) => freshness.lock().await.push((
                            at.saturating_duration_since(started),
                            at.elapsed().as_secs_f64() * 1000.0,
                        )),
                        Err(e) => failures.lock().await.push(format!("{e:#}")),
                    }
                });
            }
            while polls.join_next().await.is_some() {}
        })
    };
    let outcome = load::open_loop(
        commands,
        args.connections,
        f64::from(args.rate),
        duration,
        make,
        Some(sink),
    )
    .await;
    readers_done.await?;
    let peak = deployed.peak_rss_bytes().unwrap_or(0);

    // The raw limit: the same read, waiting for nothing.
    let mut plain = Vec::new();
    let url = readers.url(&format!("/v1/customers/{}/balance", society.customers[0]));
    for _ in 0..200 {
        let sent = Instant::now();
        let reply = readers
            .http()
            .get(&url)
            .bearer_auth(readers.key())
            .send()
            .await?;
        if reply.status().is_success() {
            plain.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    plain.sort_by(f64::total_cmp);

    let timed = std::mem::take(&mut *freshness.lock().await);
    let seconds = per_second(&timed);
    let mut times: Vec<f64> = timed.into_iter().map(|(_, ms)| ms).collect();
    times.sort_by(f64::total_cmp);
    let failures = failures.lock().await.clone();
    if times.is_empty() {
        anyhow::bail!(
            "no command's balance was read: {} answered, {}",
            outcome.ok,
            outcome
                .first_failure
                .or_else(|| failures.first().cloned())
                .unwrap_or_default()
        );
    }
    let (p50, p99, max) = (
        common::percentile(&times, 50.0),
        common::percentile(&times, 99.0),
        times.last().copied().unwrap_or(0.0),
    );
    let (plain50, plain99) = (
        common::percentile(&plain, 50.0),
        common::percentile(&plain, 99.0),
    );
    let mut r = Report::new(
        "freshness",
        format!(
            "dhanman up, {} commands/s asked for {} s ({:.0}/s answered), {} customers",
            args.rate,
            duration.as_secs(),
            outcome.rate(),
            args.deployment.customers
        ),
    );
    r.rows = vec![
        Row::new("201 -> balance reflects it, p50", p50, "ms")
            .against("plain balance read p50", plain50),
        Row::new("201 -> balance reflects it, p99", p99, "ms")
            .against("plain balance read p99", plain99),
        Row::new("201 -> balance reflects it, max", max, "ms"),
        Row::new("commands answered", outcome.rate(), "cmds/s")
            .against("rate asked", f64::from(args.rate)),
        Row::new("peak RSS (dhanman up)", peak as f64 / 1048576.0, "MiB"),
    ];
    r.notes = vec![
        format!(
            "{} commands measured; {} failed, {} dropped, {} reads failed",
            times.len(),
            outcome.failed,
            outcome.dropped,
            failures.len()
        ),
        "the API's per-key rate limit is off (DHANMAN_API_RATE_LIMIT=0)".into(),
    ];
    if let Some(worst) = seconds.iter().max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms)) {
        r.notes.push(format!(
            "by the second the command was answered: p99 over 100 ms in {} of {} seconds; the worst, second {}: p99 {:.0} ms ({} commands)",
            seconds.iter().filter(|s| s.p99_ms > 100.0).count(),
            seconds.len(),
            worst.second,
            worst.p99_ms,
            worst.commands
        ));
    }
    r.field("rate", args.rate);
    r.field("measured", times.len());
    r.field("p50_ms", p50);
    r.field("p99_ms", p99);
    r.field("max_ms", max);
    r.field("read_p50_ms", plain50);
    r.field("read_p99_ms", plain99);
    r.field("answered_per_s", outcome.rate());
    r.field("failed", outcome.failed + failures.len());
    r.field("peak_rss_bytes", peak);
    r.field("per_second", &seconds);
    r.field(
        "measured_from",
        measured_from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    Ok(r)
}

/// The commands answered in one second of the measurement, and how fresh they were.
#[derive(Debug, Serialize)]
struct Second {
    second: u64,
    commands: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Freshness by the second in which each command was answered (from the measurement's
/// start): where a tail comes from, when it comes in bursts.
fn per_second(timed: &[(Duration, f64)]) -> Vec<Second> {
    let mut by_second: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (at, ms) in timed {
        by_second.entry(at.as_secs()).or_default().push(*ms);
    }
    by_second
        .into_iter()
        .map(|(second, mut times)| {
            times.sort_by(f64::total_cmp);
            Second {
                second,
                commands: times.len(),
                p50_ms: common::percentile(&times, 50.0),
                p99_ms: common::percentile(&times, 99.0),
                max_ms: times.last().copied().unwrap_or(0.0),
            }
        })
        .collect()
}

/// What the benchmark reads of a created invoice's answer.
#[derive(Debug, Default, serde::Deserialize)]
struct Created {
    customer_id: String,
    consistency_token: String,
}
