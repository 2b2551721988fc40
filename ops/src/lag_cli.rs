//! `dhanman lag`: consumer lag of every group on the cluster (the pipeline's, from Postgres;
//! any other, from Kafka's committed offsets), measured now: a table per partition with the
//! member holding it and its status, and a line per group (status, ours or another
//! client's, state, members, lag, oldest unconsumed record's age, consumption rate, trend,
//! time to drain), or JSON; `--watch` measures again every interval until stopped. Statuses
//! are judged over the newest samples of each partition, the API's sampler's and this
//! command's (see `dhanman_connectors::lag::status`).

use std::time::Duration;

use anyhow::Context;
use dhanman_connectors::lag::{self, GroupLag, LagReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this consumer group (e.g. `dhanman.ledger`).
    #[arg(long)]
    group: Option<String>,
    /// One JSON document per measurement instead of the table.
    #[arg(long)]
    json: bool,
    /// Measure again every `--interval-ms` until interrupted.
    #[arg(long)]
    watch: bool,
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    #[command(flatten)]
    connections: crate::Connections,
    #[command(flatten)]
    lag: crate::LagSettings,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pool = args.connections.pool().await?;
    let probe = dhanman_connectors::kafka::probe(&args.connections.kafka_bootstrap_servers)?;
    let scope = args
        .lag
        .scope(&args.connections.topic_prefix, args.group.clone());
    loop {
        let report = lag::measure(&pool, &probe, &scope)
            .await
            .context("measuring lag (KAFKA_BOOTSTRAP_SERVERS)")?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if args.watch {
                // Clear the screen and home the cursor: a live view, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&report));
        }
        if !args.watch {
            if report.groups.is_empty() {
                eprintln!("no consumer group has committed offsets yet");
            }
            if report.groups_left_out > 0 {
                eprintln!(
                    "{} consumer group(s) left out: the sample reached DHANMAN_LAG_MAX_PARTITIONS",
                    report.groups_left_out
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
}

fn rate(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:+.1}{unit}"))
}

fn summary(g: &GroupLag) -> String {
    let eta = match g.eta_seconds {
        Some(s) => format!("{s:.0}s"),
        None if g.lag == 0 => "drained".to_string(),
        None => "not draining".to_string(),
    };
    let judged = if g.complete < 1.0 {
        format!(" ({:.0}% judged)", g.complete * 100.0)
    } else {
        String::new()
    };
    format!(
        "{} {}{} [{}] ({}, {} member(s), offsets in {}): lag {} records, oldest {:.1}s, consuming {}, lag trend {}, ETA {}",
        g.status.as_str(),
        g.group,
        judged,
        if g.ours { "ours" } else { "foreign" },
        g.state.as_deref().unwrap_or("state unknown"),
        g.members.len(),
        g.offsets_in.as_str(),
        g.lag,
        g.max_lag_seconds,
        rate(g.consume_rate, "/s").trim_start_matches('+'),
        rate(g.lag_trend, "/s"),
        eta
    )
}

/// The report as a terminal table.
pub fn table(report: &LagReport) -> String {
    let mut out = format!(
        "{:<32} {:<36} {:>4} {:>10} {:>10} {:>8} {:>9}  {:<6} {:<16} {}\n",
        "GROUP",
        "TOPIC",
        "PART",
        "COMMITTED",
        "LOG-END",
        "LAG",
        "LAG(s)",
        "STATUS",
        "HOST",
        "CLIENT-ID"
    );
    for g in &report.groups {
        for p in &g.partitions {
            out.push_str(&format!(
                "{:<32} {:<36} {:>4} {:>10} {:>10} {:>8} {:>9.1}  {:<6} {:<16} {}\n",
                p.group,
                p.topic,
                p.partition,
                p.committed,
                p.log_end,
                p.lag,
                p.lag_seconds,
                p.status.as_str(),
                p.host.as_deref().unwrap_or("-"),
                p.client_id.as_deref().unwrap_or("-")
            ));
        }
    }
    out.push('\n');
    for p in report.groups.iter().flat_map(|g| &g.partitions) {
        if let Some(stored) = p.stored_outside_log {
            let (side, edge) = if stored > p.log_end {
                ("past the log's end", p.log_end)
            } else {
                ("below the log's start", p.committed)
            };
            out.push_str(&format!(
                "{} {}[{}]: stored offset {stored} is {side} ({edge}); counted from {}\n",
                p.group, p.topic, p.partition, p.committed
            ));
        }
    }
    for g in &report.groups {
        out.push_str(&summary(g));
        out.push('\n');
    }
    out
}
