//! Consumer lag of the pipeline's groups: per group, topic and partition, the committed
//! offset (Postgres's `consumer_offsets`, the processors' authority), the log-end offset
//! (the broker's high watermark), the lag in records, and the lag in seconds: the age of
//! the oldest record not yet consumed, read from the broker. Samples kept in `lag_samples`
//! give each group its trend, consumption rate and time to drain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sqlx::PgPool;

use crate::Result;
use crate::kafka::{Probe, partition_count, record_timestamps};

/// How far back the trend and the rate look.
pub const TREND_WINDOW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Next offset the group will read; the log start when it has read nothing yet.
    pub committed: i64,
    pub log_end: i64,
    pub lag: i64,
    /// Age of the oldest unconsumed record, 0 when there is none.
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub lag: i64,
    pub max_lag_seconds: f64,
    /// Records consumed per second over the trend window (None before two samples).
    pub consume_rate: Option<f64>,
    /// Change of the lag per second over the window: positive grows, negative drains.
    pub lag_trend: Option<f64>,
    /// Seconds until the lag is drained at the current rate, if it is draining.
    pub eta_seconds: Option<f64>,
    /// (sampled at, lag) over the window, oldest first.
    pub history: Vec<(DateTime<Utc>, i64)>,
    pub partitions: Vec<PartitionLag>,
}

/// What a sample of the whole pipeline says.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    pub measured_at: DateTime<Utc>,
    pub groups: Vec<GroupLag>,
}

/// Measures every group in `consumer_offsets` (or one), on every partition of the topics
/// it reads, and records the sample.
pub async fn measure(pool: &PgPool, probe: &Probe, group: Option<&str>) -> Result<LagReport> {
    let partitions = partitions(pool, probe, group, "", true).await?;
    let measured_at = Utc::now();
    record(pool, measured_at, &partitions).await?;
    report(pool, measured_at, partitions).await
}

/// What each group has yet to read (`reads`: group and the topics it reads), on every
/// partition of those topics; a partition the group has stored no offset for counts from
/// the log's start. Unlike the lag report, which knows only the topics a group has
/// committed on, this sees a group that has not yet read a topic at all. Lag in records
/// only; nothing recorded.
pub async fn unread(
    pool: &PgPool,
    probe: &Probe,
    reads: &[(String, Vec<String>)],
) -> Result<Vec<PartitionLag>> {
    let groups: Vec<String> = reads.iter().map(|(g, _)| g.clone()).collect();
    let committed: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "select group_id, topic, partition, next_offset from consumer_offsets
          where group_id = any($1)",
    )
    .bind(&groups)
    .fetch_all(pool)
    .await?;
    let (probe, wanted) = (probe.clone(), wanted(reads, &committed));
    let mut partitions = tokio::task::spawn_blocking(move || look_at(&probe, wanted, false))
        .await
        .map_err(|e| crate::Error::BrokerAnswer(format!("lag probe failed: {e}")))??;
    partitions.retain(|p| p.lag > 0);
    Ok(partitions)
}

/// The lag of every partition the groups in `consumer_offsets` read (one group, or those
/// whose name starts with `prefix`); see [`look`].
async fn partitions(
    pool: &PgPool,
    probe: &Probe,
    group: Option<&str>,
    prefix: &str,
    ages: bool,
) -> Result<Vec<PartitionLag>> {
    let committed: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "select group_id, topic, partition, next_offset from consumer_offsets
          where ($1::text is null or group_id = $1) and starts_with(group_id, $2)
          order by group_id, topic, partition",
    )
    .bind(group)
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    let probe = probe.clone();
    tokio::task::spawn_blocking(move || look(&probe, &committed, ages))
        .await
        .map_err(|e| crate::Error::BrokerAnswer(format!("lag probe failed: {e}")))?
}

/// Partitions grouped into their groups, each with its trend from the samples.
async fn report(
    pool: &PgPool,
    measured_at: DateTime<Utc>,
    partitions: Vec<PartitionLag>,
) -> Result<LagReport> {
    let mut by_group: BTreeMap<String, Vec<PartitionLag>> = BTreeMap::new();
    for p in partitions {
        by_group.entry(p.group.clone()).or_default().push(p);
    }
    let mut groups = Vec::with_capacity(by_group.len());
    for (group, partitions) in by_group {
        groups.push(summarize(pool, group, partitions).await?);
    }
    Ok(LagReport {
        measured_at,
        groups,
    })
}

/// (sampled at, group, topic, partition, committed, log end, lag seconds)
type SampleRow = (DateTime<Utc>, String, String, i32, i64, i64, f64);

/// The newest sample of every group (or one), as the sampler of a running API recorded
/// it; empty when nothing has been sampled within the trend window.
pub async fn latest(pool: &PgPool, group: Option<&str>) -> Result<LagReport> {
    let since = Utc::now() - chrono::Duration::from_std(TREND_WINDOW).unwrap_or_default();
    let rows: Vec<SampleRow> = sqlx::query_as(
        "select s.sampled_at, s.group_id, s.topic, s.partition, s.committed, s.log_end, s.lag_seconds
           from lag_samples s
           join (select group_id, max(sampled_at) as at from lag_samples
                  where sampled_at >= $2 and ($1::text is null or group_id = $1)
                  group by group_id) newest
             on newest.group_id = s.group_id and newest.at = s.sampled_at
          order by s.group_id, s.topic, s.partition",
    )
    .bind(group)
    .bind(since)
    .fetch_all(pool)
    .await?;
    let measured_at = rows.iter().map(|r| r.0).max().unwrap_or_else(Utc::now);
    let partitions = rows
        .into_iter()
        .map(
            |(_, group, topic, partition, committed, log_end, lag_seconds)| PartitionLag {
                group,
                topic,
                partition,
                committed,
                log_end,
                lag: (log_end - committed).max(0),
                lag_seconds,
            },
        )
        .collect();
    report(pool, measured_at, partitions).await
}

/// Watermarks and oldest-record ages, blocking (rdkafka's metadata calls are).
/// Lag of every partition of the topics the groups read; with `ages`, each lagging
/// partition's oldest unconsumed record is read for its age.
fn look(
    consumer: &BaseConsumer,
    committed: &[(String, String, i32, i64)],
    ages: bool,
) -> Result<Vec<PartitionLag>> {
    look_at(consumer, wanted(&[], committed), ages)
}

/// The group's next offset on each partition it has one for, by (group, topic): every
/// topic of `reads` (group, topics) and every one in `committed`.
type Wanted = BTreeMap<(String, String), BTreeMap<i32, Option<i64>>>;

fn wanted(reads: &[(String, Vec<String>)], committed: &[(String, String, i32, i64)]) -> Wanted {
    let mut wanted = Wanted::new();
    for (group, topics) in reads {
        for topic in topics {
            wanted.entry((group.clone(), topic.clone())).or_default();
        }
    }
    for (group, topic, partition, next) in committed {
        wanted
            .entry((group.clone(), topic.clone()))
            .or_default()
            .insert(*partition, Some(*next));
    }
    wanted
}

/// [`look`] over `wanted`: every partition of each (group, topic), also those the group has
/// not read yet (from the log's start).
fn look_at(consumer: &BaseConsumer, wanted: Wanted, ages: bool) -> Result<Vec<PartitionLag>> {
    let timeout = Duration::from_secs(10);
    let mut out = Vec::new();
    for ((group, topic), known) in wanted {
        let count = partition_count(consumer, &topic, timeout)?;
        for partition in 0..count.max(known.keys().max().map_or(0, |p| p + 1)) {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            let committed = known
                .get(&partition)
                .copied()
                .flatten()
                .unwrap_or(low)
                .clamp(low, high.max(low));
            let lag = (high - committed).max(0);
            out.push(PartitionLag {
                group: group.clone(),
                topic: topic.clone(),
                partition,
                committed,
                log_end: high,
                lag,
                lag_seconds: 0.0,
            });
        }
    }
    if ages {
        // The oldest waiting record of every lagging partition, read together: in rounds
        // of one offset per partition (groups may wait at different offsets of one).
        let mut waiting: BTreeSet<((String, i32), i64)> = out
            .iter()
            .filter(|p| p.lag > 0)
            .map(|p| ((p.topic.clone(), p.partition), p.committed))
            .collect();
        let mut read: HashMap<((String, i32), i64), i64> = HashMap::new();
        while !waiting.is_empty() {
            let mut round: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for (at, offset) in &waiting {
                round.entry(at.clone()).or_insert(*offset);
            }
            let round: Vec<((String, i32), i64)> = round.into_iter().collect();
            let times = record_timestamps(consumer, &round, timeout)?;
            for (at, offset) in round {
                waiting.remove(&(at.clone(), offset));
                if let Some(ts) = times.get(&at) {
                    read.insert((at, offset), *ts);
                }
            }
        }
        let now = Utc::now().timestamp_millis();
        for p in out.iter_mut().filter(|p| p.lag > 0) {
            if let Some(ts) = read.get(&((p.topic.clone(), p.partition), p.committed)) {
                p.lag_seconds = ((now - ts).max(0) as f64) / 1000.0;
            }
        }
    }
    Ok(out)
}

async fn record(pool: &PgPool, at: DateTime<Utc>, partitions: &[PartitionLag]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for p in partitions {
        sqlx::query(
            "insert into lag_samples
                 (sampled_at, group_id, topic, partition, committed, log_end, lag_seconds)
             values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
        )
        .bind(at)
        .bind(&p.group)
        .bind(&p.topic)
        .bind(p.partition)
        .bind(p.committed)
        .bind(p.log_end)
        .bind(p.lag_seconds)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("delete from lag_samples where sampled_at < $1")
        .bind(at - chrono::Duration::from_std(TREND_WINDOW * 3).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn summarize(
    pool: &PgPool,
    group: String,
    partitions: Vec<PartitionLag>,
) -> Result<GroupLag> {
    let since = Utc::now() - chrono::Duration::from_std(TREND_WINDOW).unwrap_or_default();
    let rows: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "select sampled_at, sum(committed)::bigint, sum(greatest(log_end - committed, 0))::bigint
           from lag_samples where group_id = $1 and sampled_at >= $2
          group by sampled_at order by sampled_at",
    )
    .bind(&group)
    .bind(since)
    .fetch_all(pool)
    .await?;
    let lag: i64 = partitions.iter().map(|p| p.lag).sum();
    let max_lag_seconds = partitions.iter().map(|p| p.lag_seconds).fold(0.0, f64::max);
    let (consume_rate, lag_trend) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            let secs = (last.0 - first.0).num_milliseconds() as f64 / 1000.0;
            (
                Some((last.1 - first.1) as f64 / secs),
                Some((last.2 - first.2) as f64 / secs),
            )
        }
        _ => (None, None),
    };
    Ok(GroupLag {
        group,
        lag,
        max_lag_seconds,
        consume_rate,
        lag_trend,
        eta_seconds: eta(lag, consume_rate, lag_trend),
        history: rows.into_iter().map(|(at, _, lag)| (at, lag)).collect(),
        partitions,
    })
}

/// Time to drain: the lag over how fast it shrinks; none while it holds or grows.
pub fn eta(lag: i64, consume_rate: Option<f64>, lag_trend: Option<f64>) -> Option<f64> {
    if lag == 0 {
        return Some(0.0);
    }
    let shrinking = -lag_trend?;
    (shrinking > 0.0 && consume_rate? > 0.0).then(|| lag as f64 / shrinking)
}

/// Publishes a report as Prometheus gauges named like kafka-lag-exporter's.
pub fn export_metrics(report: &LagReport) {
    for g in &report.groups {
        let group = g.group.clone();
        metrics::gauge!("kafka_consumergroup_group_max_lag_seconds", "group" => group.clone())
            .set(g.max_lag_seconds);
        metrics::gauge!("kafka_consumergroup_group_max_lag", "group" => group.clone())
            .set(g.partitions.iter().map(|p| p.lag).max().unwrap_or(0) as f64);
        metrics::gauge!("kafka_consumergroup_group_sum_lag", "group" => group.clone())
            .set(g.lag as f64);
        for p in &g.partitions {
            let labels = [
                ("group", group.clone()),
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            metrics::gauge!("kafka_consumergroup_group_lag", &labels).set(p.lag as f64);
            metrics::gauge!("kafka_consumergroup_group_lag_seconds", &labels).set(p.lag_seconds);
            metrics::gauge!("kafka_consumergroup_group_offset", &labels).set(p.committed as f64);
            metrics::gauge!("kafka_partition_latest_offset", &labels[1..]).set(p.log_end as f64);
        }
    }
}

/// One sample for `/metrics`: measures, records and exports; a failure is logged and
/// leaves the previous values.
pub async fn sample(pool: &PgPool, probe: &Probe) {
    match measure(pool, probe, None).await {
        Ok(report) => export_metrics(&report),
        Err(e) => tracing::warn!(error = %e, "lag sample failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::eta;

    #[test]
    fn eta_is_lag_over_the_drain_rate_and_none_while_it_does_not_drain() {
        assert_eq!(eta(0, None, None), Some(0.0));
        assert_eq!(eta(100, Some(50.0), Some(-20.0)), Some(5.0));
        assert_eq!(eta(100, Some(50.0), Some(10.0)), None);
        assert_eq!(eta(100, Some(0.0), Some(-1.0)), None);
        assert_eq!(eta(100, None, None), None);
    }
}
