//! `dhanman bench replay`: N events already applied by the ledger, replayed with
//! `dhanman replay --processor ledger --execute` (this executable, the command operators
//! run) over each topic from the beginning; the books before and after are compared row by
//! row (every account and party balance), and must not differ. The raw limit beside it is
//! a plain consumer's read of the same topics.

use std::collections::BTreeSet;
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::Value;
use sqlx::PgPool;

use super::common::{Common, Report, Row};
use super::pipeline::{self, Shape, Stage};
use super::raw;

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Events applied, then replayed (half invoices, half payments).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    #[command(flatten)]
    pub shape: Shape,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let stage = Stage::open(&args.common, args.shape.partitions).await?;
    let measured = measure(&args, &stage).await;
    let closed = stage.close().await;
    let report = measured?;
    closed?;
    report.print(args.common.json);
    Ok(())
}

/// Every balance row, as text.
async fn books(pool: &PgPool) -> anyhow::Result<BTreeSet<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select format('account %s %s %s %s %s', organization_id, account_code, currency,
                       debit_total, credit_total)
           from account_balances
         union all
         select format('party %s %s %s %s %s %s %s', organization_id, account_code, party_type,
                       party_id, currency, debit_total, credit_total)
           from party_balances
         union all
         select format('entries %s postings %s', (select count(*) from journal_entries),
                       (select count(*) from postings))",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

async fn measure(args: &Args, stage: &Stage) -> anyhow::Result<Report> {
    let common = &args.common;
    let (org, (events, _)) = pipeline::fill(common, stage, args.events).await?;
    pipeline::status(
        common,
        format!("applying {events} events with the ledger ..."),
    );
    pipeline::run_pipeline(&args.shape, stage, &common.kafka_bootstrap_servers, events).await?;
    pipeline::check_books(&stage.db.pool, org, events).await?;
    let before = books(&stage.db.pool).await?;

    let exe = std::env::current_exe().context("finding this executable")?;
    let (mut records, mut applied, mut seconds) = (0u64, 0u64, 0.0);
    for topic in &stage.topics {
        pipeline::status(
            common,
            format!("dhanman replay --processor ledger --topic {topic} --execute ..."),
        );
        let output = tokio::process::Command::new(&exe)
            .args(["replay", "--processor", "ledger", "--topic", topic])
            .args(["--from", "beginning", "--execute", "--json"])
            .env("DHANMAN_DATABASE_URL", &stage.db.url)
            .env(
                "DHANMAN_KAFKA_BOOTSTRAP_SERVERS",
                &*common.kafka_bootstrap_servers,
            )
            .env("DHANMAN_TOPIC_PREFIX", &stage.prefix)
            .env("DHANMAN_SCHEMA_REGISTRY_URL", &stage.registry_url)
            .env("DHANMAN_BATCH_SIZE", args.shape.batch_size.to_string())
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "dhanman replay failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let summary: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "dhanman replay printed {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        records += summary["records"].as_u64().unwrap_or(0);
        applied += summary["applied"].as_u64().unwrap_or(0);
        seconds += summary["seconds"].as_f64().unwrap_or(0.0);
    }
    let after = books(&stage.db.pool).await?;
    let balance_changes = before.symmetric_difference(&after).count();
    if records as usize != events {
        bail!("the replays read {records} records, {events} were applied");
    }

    let raw_consume_per_s = raw::consume_per_s(common, stage, events).await?;
    let replay_per_s = records as f64 / seconds;

    let mut r = Report::new(
        "replay",
        format!(
            "{events} events applied, then replayed over {} topics",
            stage.topics.len()
        ),
    );
    r.rows = vec![
        Row::new("dhanman replay --execute", replay_per_s, "events/s")
            .against("raw consume of the same topics", raw_consume_per_s),
        Row::new("balance rows changed", balance_changes as f64, "rows"),
        Row::new("events applied again", applied as f64, "events"),
    ];
    r.notes = vec![
        "replay rate: records over the replays' own time (process start-up and the plan not counted)".into(),
        format!("raw consume: median of {} runs", common.runs()),
    ];
    r.field("events", events);
    r.field("replay_per_s", replay_per_s);
    r.field("raw_consume_per_s", raw_consume_per_s);
    r.field("ratio_to_limit", replay_per_s / raw_consume_per_s);
    r.field("balance_changes", balance_changes);
    r.field("applied_again", applied);
    Ok(r)
}
