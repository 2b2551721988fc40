//! `dhanman bench e2e`: the whole pipeline as deployed (`dhanman up`: API, relay, every
//! processor) under invoices through the API at rising rates, each held for
//! `--hold-seconds`, until one is not sustained; then the books are audited.
//!
//! A rate is sustained when, during its hold, the API answered at least 95% of the commands
//! due (answers to requests still queued when the hold ended do not count) with none failed
//! or dropped, and every backlog stayed bounded: the requests waiting for a connection in
//! front of the API, the outbox depth and each processor group's lag, sampled every second,
//! averaged over the last third of the hold, are not above their average over the first
//! third by more than two seconds' worth of commands (at least 100). A backlog that grows
//! steadily fails that; one that only wobbles does not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::common::{self, Common, Report, Row};
use super::deployed::{Backlog, Deployed, Deployment};
use super::load::{self, Invoices};

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The rates tried, in commands/s, in order, until one is not sustained.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,2000,4000,8000,16000"
    )]
    pub rates: Vec<u32>,
    /// Seconds each rate is held.
    #[arg(long, default_value_t = 60)]
    pub hold_seconds: u64,
    /// Most requests in flight: enough that the rate, not the load generator's waiting,
    /// is what the pipeline is asked (at 64 the generator stalled near 3,200/s on 2 cores,
    /// each command answered in about 20 ms with the whole pipeline beside it).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    #[command(flatten)]
    pub deployment: Deployment,
    /// Longest wait for the backlog to drain before the audit.
    #[arg(long, default_value_t = 300)]
    pub drain_seconds: u64,
}

#[derive(Debug, Serialize)]
struct Step {
    rate: u32,
    answered_per_s: f64,
    failed: usize,
    dropped: usize,
    p99_ms: f64,
    outbox_first: f64,
    outbox_last: f64,
    lag_first: f64,
    lag_last: f64,
    /// Requests due but waiting for one of the `--connections`, over the first and last
    /// third: the queue in front of the API.
    queue_first: f64,
    queue_last: f64,
    sustained: bool,
    /// Why the rate was not sustained, each condition it missed (empty when it was).
    missed: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    Deployed::measure_and_print(&args.common, &args.deployment, async |deployed| {
        measure(&args, deployed).await
    })
    .await
}

/// Mean of the first and of the last third of `values`.
fn thirds(values: &[f64]) -> (f64, f64) {
    let third = (values.len() / 3).max(1);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (
        mean(&values[..third.min(values.len())]),
        mean(&values[values.len().saturating_sub(third)..]),
    )
}

/// The rule of the module's doc: the last third not above the first by more than
/// `margin`.
fn bounded(values: &[f64], margin: f64) -> bool {
    let (first, last) = thirds(values);
    last <= first + margin
}

/// The requests waiting for a connection, each second of the hold.
fn queue_series(outcome: &load::Outcome) -> Vec<f64> {
    outcome
        .waiting_each_second
        .iter()
        .map(|&w| w as f64)
        .collect()
}

/// The outbox depth, each second of the hold.
fn outbox_series(samples: &[Backlog]) -> Vec<f64> {
    samples.iter().map(|s| s.outbox as f64).collect()
}

/// The conditions of a sustained rate (see the module's note) that a hold at `rate` missed,
/// each said in words; none when it was sustained.
fn missed(rate: u32, answered: f64, outcome: &load::Outcome, samples: &[Backlog]) -> Vec<String> {
    let margin = (2.0 * f64::from(rate)).max(100.0);
    let mut missed = Vec::new();
    if outcome.failed > 0 {
        missed.push(format!(
            "{} failed (the first: {})",
            outcome.failed,
            outcome.first_failure.as_deref().unwrap_or("?")
        ));
    }
    if outcome.dropped > 0 {
        missed.push(format!("{} dropped by the load generator", outcome.dropped));
    }
    if answered < 0.95 * f64::from(rate) {
        missed.push(format!(
            "{answered:.0}/s answered during the hold, under 95% of {rate}/s"
        ));
    }
    let queue = queue_series(outcome);
    if !bounded(&queue, margin) {
        missed.push("the requests waiting for a connection grew".into());
    }
    if !bounded(&outbox_series(samples), margin) {
        missed.push("the outbox grew".into());
    }
    let groups: std::collections::BTreeSet<&String> = samples
        .iter()
        .flat_map(|s| s.lags.iter().map(|(g, _)| g))
        .collect();
    for group in groups {
        let series: Vec<f64> = samples
            .iter()
            .map(|s| {
                s.lags
                    .iter()
                    .find(|(n, _)| n == group)
                    .map_or(0.0, |(_, l)| *l as f64)
            })
            .collect();
        if !bounded(&series, margin) {
            missed.push(format!("the lag of group {group} grew"));
        }
    }
    missed
}

async fn measure(args: &Args, deployed: &mut Deployed) -> anyhow::Result<Report> {
    let society = deployed.society(args.deployment.customers).await?;
    let invoices = Invoices::new(&society.customers);
    let client = deployed.client(&society, args.connections)?;
    let make = super::api::singles(&invoices, "/v1/invoices");
    let hold = Duration::from_secs(args.hold_seconds.max(3));
    let mut steps = Vec::new();
    let mut sustained_per_s = 0;
    for &rate in &args.rates {
        super::pipeline::status(&args.common, format!("{rate} commands/s for {hold:?} ..."));
        // Each rate's commands under keys of their own.
        let make = {
            let make = make.clone();
            let offset = u64::from(rate) << 32;
            Arc::new(move |seq| make(offset + seq))
                as Arc<dyn Fn(u64) -> load::Command + Send + Sync>
        };
        let sending = tokio::spawn(load::open_loop(
            client.clone(),
            args.connections,
            f64::from(rate),
            hold,
            make,
            None,
        ));
        let mut samples: Vec<Backlog> = Vec::new();
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        while start.elapsed() < hold {
            ticker.tick().await;
            deployed.check_running()?;
            samples.push(deployed.backlog().await?);
        }
        let outcome = sending.await?;
        let outbox = outbox_series(&samples);
        let lag: Vec<f64> = samples.iter().map(|s| s.max_lag() as f64).collect();
        let answered = outcome.ok_in_time as f64 / hold.as_secs_f64();
        let missed = missed(rate, answered, &outcome, &samples);
        let sustained = missed.is_empty();
        let (outbox_first, outbox_last) = thirds(&outbox);
        let (lag_first, lag_last) = thirds(&lag);
        let (queue_first, queue_last) = thirds(&queue_series(&outcome));
        steps.push(Step {
            rate,
            answered_per_s: answered,
            failed: outcome.failed,
            dropped: outcome.dropped,
            p99_ms: common::percentile(&outcome.sorted_latencies(), 99.0),
            outbox_first,
            outbox_last,
            lag_first,
            lag_last,
            queue_first,
            queue_last,
            sustained,
            missed,
        });
        if !sustained {
            break;
        }
        sustained_per_s = rate;
    }

    super::pipeline::status(&args.common, "draining the backlog ...".into());
    let drained = deployed
        .drain(Duration::from_secs(args.drain_seconds))
        .await?;
    let audit = dhanman_processors::audit::audit(&deployed.db.pool).await?;
    let peak = deployed.peak_rss_bytes().unwrap_or(0);
    let highest_answered = steps.iter().map(|s| s.answered_per_s).fold(0.0, f64::max);

    let mut r = Report::new(
        "e2e",
        format!(
            "dhanman up, {} customers, {} connections, each rate held {} s",
            args.deployment.customers,
            args.connections,
            hold.as_secs()
        ),
    );
    for s in &steps {
        r.rows.push(
            Row::new(
                format!(
                    "{} /s {} (outbox {:.0}->{:.0}, lag {:.0}->{:.0}, queue {:.0}->{:.0})",
                    s.rate,
                    if s.sustained { "held" } else { "NOT held" },
                    s.outbox_first,
                    s.outbox_last,
                    s.lag_first,
                    s.lag_last,
                    s.queue_first,
                    s.queue_last
                ),
                s.answered_per_s,
                "cmds/s",
            )
            .against("rate asked", f64::from(s.rate)),
        );
    }
    r.rows.push(
        Row::new("sustained", f64::from(sustained_per_s), "cmds/s")
            .against("highest rate the API answered", highest_answered),
    );
    r.rows.push(Row::new(
        "peak RSS (dhanman up)",
        peak as f64 / 1048576.0,
        "MiB",
    ));
    r.notes = vec![
        "sustained: >= 95% answered during the hold, none failed or dropped, and the \
         requests queued for a connection, the outbox depth and every group's lag (sampled \
         each second) not higher over the last third of the hold than over the first by \
         more than max(2 s of commands, 100)"
            .into(),
        "the API's per-key rate limit is off (DHANMAN_API_RATE_LIMIT=0); no mail server, so \
         invoice emails wait in the delivery log"
            .into(),
    ];
    r.notes.extend(
        steps
            .iter()
            .filter(|s| !s.sustained)
            .map(|s| format!("{}/s not held: {}", s.rate, s.missed.join("; "))),
    );
    r.notes.push(format!(
        "after the load: backlog {}; {}",
        if drained { "drained" } else { "NOT drained" },
        audit.summary()
    ));
    r.field("sustained_per_s", sustained_per_s);
    r.field("hold_seconds", hold.as_secs());
    r.field("steps", &steps);
    r.field("drained", drained);
    r.field("audit_clean", audit.is_clean());
    r.field("audit_violations", audit.violations.len());
    r.field("peak_rss_bytes", peak);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_or_draining_backlog_is_bounded_and_a_growing_one_is_not() {
        assert!(bounded(&[0.0, 5.0, 0.0, 3.0, 0.0, 4.0], 100.0));
        assert!(bounded(&[900.0, 800.0, 500.0, 300.0, 100.0, 0.0], 100.0));
        assert!(!bounded(&[0.0, 100.0, 200.0, 300.0, 400.0, 500.0], 100.0));
        assert!(bounded(&[], 100.0));
        assert_eq!(thirds(&[1.0, 2.0, 3.0]), (1.0, 3.0));
    }

    fn backlog(outbox: i64, ledger: i64, reminders: i64) -> Backlog {
        Backlog {
            outbox,
            lags: vec![("ledger".into(), ledger), ("reminders".into(), reminders)],
        }
    }

    #[test]
    fn a_rate_not_held_says_each_condition_it_missed() {
        let steady: Vec<Backlog> = (0..6).map(|i| backlog(50 + i % 2, 80, 10)).collect();
        let all_answered = load::Outcome {
            ok: 6000,
            ..Default::default()
        };
        assert!(missed(100, 100.0, &all_answered, &steady).is_empty());

        let queue_growing = load::Outcome {
            ok: 6000,
            waiting_each_second: (0..6).map(|i| i * 100).collect(),
            ..Default::default()
        };
        assert_eq!(
            missed(100, 100.0, &queue_growing, &steady),
            ["the requests waiting for a connection grew"]
        );

        let growing: Vec<Backlog> = (0..6).map(|i| backlog(50, 80, i * 100)).collect();
        let outcome = load::Outcome {
            ok: 5000,
            failed: 2,
            first_failure: Some("503 Service Unavailable: busy".into()),
            ..Default::default()
        };
        assert_eq!(
            missed(100, 90.0, &outcome, &growing),
            [
                "2 failed (the first: 503 Service Unavailable: busy)",
                "90/s answered during the hold, under 95% of 100/s",
                "the lag of group reminders grew",
            ]
        );
    }
}
