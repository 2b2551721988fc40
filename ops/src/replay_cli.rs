//! `dhanman replay`: a processor re-run over a range of a topic with a consumer of its own
//! (no group membership, no commits: the live group is not disturbed). The processor's
//! gate makes it idempotent: events already applied are skipped, so a replay over them
//! changes no balance, sends no email and re-arms no timer. Without `--execute` it only
//! surveys the range: events in it, already applied, would apply, per type.
//!
//! With `--correct` (the ledger only) it corrects instead: see [`correct`].

mod correct;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dhanman_connectors::kafka::{TimeLookup, offset_for_time};
use dhanman_connectors::offsets::{self, TopicSpec};
use dhanman_plumbing::kafka::client_config;
use dhanman_processors::runtime::{BatchReport, Survey};
use dhanman_processors::{Incoming, Processor, Runtime};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::{Config, ProcessorJob, with_processor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The processor to re-run (`ledger`, `users`, ...).
    #[arg(long)]
    processor: String,
    /// The topic as named on the broker (with any `DHANMAN_TOPIC_PREFIX`).
    #[arg(long)]
    topic: String,
    /// Only this partition; every partition when omitted.
    #[arg(long)]
    partition: Option<i32>,
    /// `beginning`, `offset:N` or `time:RFC3339` (the first record at or after it).
    #[arg(long, value_parser = parse_from)]
    from: Bound,
    /// `now` (the log end when the replay starts), `offset:N` (stops before N) or
    /// `time:RFC3339` (stops before the first record at or after it).
    #[arg(long, default_value = "now", value_parser = parse_to)]
    to: Bound,
    /// Apply the range (without it: only say what would change).
    #[arg(long)]
    execute: bool,
    /// The ledger only: compare each event's entry with what today's posting rules make,
    /// and reverse and re-post those that differ (with `--execute`; without it, print the
    /// differences per account and party).
    #[arg(long)]
    correct: bool,
    /// A JSON summary instead of the table (and no progress bar).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    Beginning,
    Now,
    Offset(i64),
    Time(DateTime<Utc>),
}

fn parse_bound(raw: &str) -> Result<Bound, String> {
    match raw {
        "beginning" => Ok(Bound::Beginning),
        "now" => Ok(Bound::Now),
        _ => match raw.split_once(':') {
            Some(("offset", n)) => n
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Bound::Offset)
                .ok_or_else(|| format!("{raw:?}: offset:N takes a whole number >= 0")),
            Some(("time", t)) => DateTime::parse_from_rfc3339(t)
                .map(|t| Bound::Time(t.with_timezone(&Utc)))
                .map_err(|e| format!("{raw:?}: time:T takes an RFC 3339 time ({e})")),
            _ => Err(format!(
                "{raw:?}: expected beginning, now, offset:N or time:RFC3339"
            )),
        },
    }
}

fn parse_from(raw: &str) -> Result<Bound, String> {
    match parse_bound(raw)? {
        Bound::Now => Err("--from now would replay nothing".into()),
        bound => Ok(bound),
    }
}

fn parse_to(raw: &str) -> Result<Bound, String> {
    match parse_bound(raw)? {
        Bound::Beginning => Err("--to beginning would replay nothing".into()),
        bound => Ok(bound),
    }
}

/// One partition's range: [start, end).
#[derive(Debug, Clone, Serialize)]
struct Range {
    partition: i32,
    start: i64,
    end: i64,
}

#[derive(Debug, Serialize)]
struct Summary {
    processor: String,
    topic: String,
    executed: bool,
    ranges: Vec<Range>,
    records: usize,
    survey: Survey,
    /// With `--execute`: what the batches did.
    applied: usize,
    skipped_as_applied: usize,
    ignored: usize,
    dead_lettered: usize,
    seconds: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.correct {
        return correct::run(args).await;
    }
    let (processor, config) = (args.processor.clone(), args.config.clone());
    with_processor(&processor, &config, args).await
}

/// The replay itself, once `with_processor` has built the processor `--processor` names.
impl ProcessorJob for Args {
    async fn with<P: Processor>(self, processor: P) -> anyhow::Result<()> {
        let reads = self.config.topics_of(&processor);
        if !reads.contains(&self.topic) {
            bail!(
                "processor {} does not read {}; it reads {}",
                processor.name(),
                self.topic,
                reads.join(", ")
            );
        }
        let name = processor.name().to_string();
        let pool = self.config.pool().await?;
        let runtime = Runtime::new(
            processor,
            pool,
            self.config.codec()?,
            self.config.runtime_config(),
        )
        .for_replay();
        let ranges = self.ranges().await?;
        let started = Instant::now();
        let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
        let bar = if self.json {
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden())
        } else {
            ProgressBar::new(total as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records, {per_sec}, ETA {eta}",
            )
            .context("progress bar template")?,
        );
        let mut summary = Summary {
            processor: name,
            topic: self.topic.clone(),
            executed: self.execute,
            ranges: ranges.clone(),
            records: 0,
            survey: Survey::default(),
            applied: 0,
            skipped_as_applied: 0,
            ignored: 0,
            dead_lettered: 0,
            seconds: 0.0,
        };
        let consumer = self.consumer(&ranges)?;
        let mut open: BTreeMap<i32, i64> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| (r.partition, r.end))
            .collect();
        let max_batch = self.config.batch_size.max(1);
        while !open.is_empty() {
            let batch = gather(&consumer, &mut open, max_batch).await?;
            if batch.is_empty() {
                continue;
            }
            let survey = runtime.survey(&batch).await?;
            summary.survey.add(&survey);
            summary.records += batch.len();
            if self.execute {
                let BatchReport {
                    applied,
                    duplicates,
                    ignored,
                    dead_lettered,
                    ..
                } = runtime.apply_batch(&batch).await;
                summary.applied += applied;
                summary.skipped_as_applied += duplicates;
                summary.ignored += ignored;
                summary.dead_lettered += dead_lettered;
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        summary.seconds = started.elapsed().as_secs_f64();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", table(&summary));
        }
        Ok(())
    }
}

/// Reads the next records inside the ranges, closing each partition at its end.
async fn gather(
    consumer: &StreamConsumer,
    open: &mut BTreeMap<i32, i64>,
    max_batch: usize,
) -> anyhow::Result<Vec<Incoming>> {
    let mut batch = Vec::new();
    let linger = Instant::now() + Duration::from_millis(50);
    while batch.len() < max_batch && !open.is_empty() {
        let wait = if batch.is_empty() {
            Duration::from_secs(30)
        } else {
            linger.saturating_duration_since(Instant::now())
        };
        let message = match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(m) => m.context("reading the range")?,
            Err(_) if batch.is_empty() => bail!(
                "no record arrived for 30 s while partitions {:?} were still short of their end",
                open.keys().collect::<Vec<_>>()
            ),
            Err(_) => break,
        };
        let record = Incoming::from_message(&message);
        let Some(end) = open.get(&record.partition).copied() else {
            continue;
        };
        if record.offset + 1 >= end {
            open.remove(&record.partition);
        }
        if record.offset < end {
            batch.push(record);
        }
    }
    Ok(batch)
}

impl Args {
    /// Each partition's [start, end), from the bounds; times through offsets-for-times,
    /// whose answers are checked against the records (a wrong one stops the replay).
    async fn ranges(&self) -> anyhow::Result<Vec<Range>> {
        let spec = TopicSpec {
            topic: self.topic.clone(),
            partitions: self.partition.map(|p| vec![p]),
        };
        let bounds = offsets::log_bounds(&self.config.kafka_bootstrap_servers, vec![spec]).await?;
        let mut ranges = Vec::new();
        for (_, partition, low, high) in bounds {
            let start = self.offset_of(self.from, partition, low, high).await?;
            let end = self.offset_of(self.to, partition, low, high).await?;
            ranges.push(Range {
                partition,
                start,
                end: end.max(start),
            });
        }
        Ok(ranges)
    }

    async fn offset_of(
        &self,
        bound: Bound,
        partition: i32,
        low: i64,
        high: i64,
    ) -> anyhow::Result<i64> {
        Ok(match bound {
            Bound::Beginning => low,
            Bound::Now => high,
            Bound::Offset(n) => n.clamp(low, high),
            Bound::Time(at) => {
                let lookup = offset_for_time(
                    &self.config.kafka_bootstrap_servers,
                    &self.topic,
                    partition,
                    at.timestamp_millis(),
                )
                .await
                .with_context(|| {
                    format!(
                        "finding {at} on {}/{partition}; the range is not replayed",
                        self.topic
                    )
                })?;
                match lookup {
                    TimeLookup::Offset(o) => o,
                    TimeLookup::End => high,
                }
            }
        })
    }

    /// A consumer assigned to the ranges: no group membership, nothing committed.
    fn consumer(&self, ranges: &[Range]) -> anyhow::Result<StreamConsumer> {
        let consumer: StreamConsumer = client_config(&self.config.kafka_bootstrap_servers)
            .set(
                "group.id",
                format!("dhanman-replay-{}", uuid::Uuid::now_v7()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| r.end > r.start) {
            tpl.add_partition_offset(&self.topic, r.partition, Offset::Offset(r.start))?;
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }
}

fn table(s: &Summary) -> String {
    let mut out = format!(
        "{} {} over {} ({} records, {:.1}s)\n",
        if s.executed { "replayed" } else { "dry run of" },
        s.processor,
        s.topic,
        s.records,
        s.seconds
    );
    for r in &s.ranges {
        out.push_str(&format!(
            "  partition {:>3}: offsets {} to {} ({} records)\n",
            r.partition,
            r.start,
            r.end,
            r.end - r.start
        ));
    }
    out.push_str(&format!(
        "{:<48} {:>9} {:>16} {:>12} {:>8}\n",
        "TYPE", "IN RANGE", "ALREADY APPLIED", "WOULD APPLY", "IGNORED"
    ));
    for (name, c) in &s.survey.by_type {
        out.push_str(&format!(
            "{:<48} {:>9} {:>16} {:>12} {:>8}\n",
            name, c.in_range, c.already_applied, c.would_apply, c.ignored
        ));
    }
    if s.survey.poison > 0 {
        out.push_str(&format!(
            "{} record(s) cannot be read (poison: dead-lettered when executed, once)\n",
            s.survey.poison
        ));
    }
    if s.executed {
        out.push_str(&format!(
            "applied {}, skipped as already applied {}, ignored {}, dead-lettered {}\n",
            s.applied, s.skipped_as_applied, s.ignored, s.dead_lettered
        ));
    } else {
        out.push_str("nothing changed; add --execute to apply what would apply\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_and_the_empty_ones_are_refused() {
        assert_eq!(parse_from("beginning"), Ok(Bound::Beginning));
        assert_eq!(parse_from("offset:42"), Ok(Bound::Offset(42)));
        assert!(matches!(
            parse_from("time:2026-11-29T10:00:00Z"),
            Ok(Bound::Time(_))
        ));
        assert_eq!(parse_to("now"), Ok(Bound::Now));
        for bad in ["now", "offset:-1", "offset:x", "time:yesterday", "later"] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
        assert!(parse_to("beginning").is_err());
    }
}
