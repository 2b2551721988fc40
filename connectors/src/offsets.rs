//! Moving a consumer group's offsets, like `kafka-consumer-groups --reset-offsets`: a plan
//! first (per partition: where the group is, where it would go), then, on request, the move.
//! A processor group's offsets live in two places, and both move: Postgres
//! (`consumer_offsets`, the processors' authority) and Kafka's committed offsets (what lag
//! tools read). Any other group on the cluster has only Kafka's. Refused while the group
//! has members (the broker's group coordinator says), since a running member would carry on
//! from where it is.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dhanman_plumbing::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

pub use crate::groups::Authority;
use crate::groups::{self, Group};
use crate::kafka::{TimeLookup, offset_for_time, partition_count};
use crate::{Error, Result};

/// Where to move each partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
    /// The first record at or after the time (offsets-for-times, checked).
    Datetime(DateTime<Utc>),
}

/// Topics (all partitions, or some) to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: String,
    pub partitions: Option<Vec<i32>>,
}

impl std::str::FromStr for TopicSpec {
    type Err = String;

    /// `topic` or `topic:0,2`.
    fn from_str(raw: &str) -> std::result::Result<Self, String> {
        let (topic, partitions) = match raw.split_once(':') {
            None => (raw, None),
            Some((topic, list)) => {
                let parsed: std::result::Result<Vec<i32>, _> =
                    list.split(',').map(|p| p.trim().parse::<i32>()).collect();
                match parsed {
                    Ok(p) if !p.is_empty() && p.iter().all(|p| *p >= 0) => (topic, Some(p)),
                    _ => return Err(format!("{raw:?}: partitions must be like topic:0,1,2")),
                }
            }
        };
        if topic.is_empty() {
            return Err("the topic name is empty".into());
        }
        Ok(TopicSpec {
            topic: topic.to_string(),
            partitions,
        })
    }
}

/// One partition of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub topic: String,
    pub partition: i32,
    /// The group's next offset in Postgres; none if it has not read the partition.
    pub current: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    /// Where the group would go (clamped to the log), or `current` for `show`.
    pub target: i64,
}

/// A plan and what it was made from.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub authority: Authority,
    pub partitions: Vec<PlanRow>,
}

/// The group as the broker's coordinator describes it now.
pub async fn describe(bootstrap: &str, group: &str) -> Result<Group> {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&bootstrap).create()?;
        groups::describe(&consumer, &group)
    })
    .await
    .map_err(|e| Error::Broker(format!("group look-up failed: {e}")))?
}

/// Where `group` is: its offsets in Postgres if it has any there, else its committed
/// offsets in Kafka on every topic of the cluster.
async fn current(
    pool: &PgPool,
    bootstrap: &str,
    group: &str,
) -> Result<(Authority, BTreeMap<(String, i32), i64>)> {
    let stored: Vec<(String, i32, i64)> = sqlx::query_as(
        "select topic, partition, next_offset from consumer_offsets where group_id = $1",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    if !stored.is_empty() {
        let current = stored.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
        return Ok((Authority::Postgres, current));
    }
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    let committed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&bootstrap).create()?;
        groups::committed(&bootstrap, &group, &groups::topics(&consumer)?)
    })
    .await
    .map_err(|e| Error::Broker(format!("committed offsets look-up failed: {e}")))??;
    Ok((Authority::Kafka, committed))
}

/// The plan for `group` over `topics` (every topic it has offsets for when empty).
/// `target` none: where the group is (`show`).
pub async fn plan(
    pool: &PgPool,
    bootstrap: &str,
    group: &str,
    topics: &[TopicSpec],
    target: Option<Target>,
) -> Result<Plan> {
    let (authority, current) = current(pool, bootstrap, group).await?;
    let specs: Vec<TopicSpec> = if topics.is_empty() {
        let mut names: Vec<String> = current.keys().map(|(t, _)| t.clone()).collect();
        names.dedup();
        names
            .into_iter()
            .map(|topic| TopicSpec {
                topic,
                partitions: None,
            })
            .collect()
    } else {
        topics.to_vec()
    };
    let watermarks = log_bounds(bootstrap, specs).await?;
    let mut rows = Vec::with_capacity(watermarks.len());
    for (topic, partition, low, high) in watermarks {
        let now = current.get(&(topic.clone(), partition)).copied();
        let wanted = match target {
            None => now.unwrap_or(low),
            Some(Target::Earliest) => low,
            Some(Target::Latest) => high,
            Some(Target::Offset(o)) => o,
            Some(Target::ShiftBy(n)) => now.unwrap_or(low).saturating_add(n),
            Some(Target::Datetime(at)) => {
                match offset_for_time(bootstrap, &topic, partition, at.timestamp_millis()).await? {
                    TimeLookup::Offset(o) => o,
                    TimeLookup::End => high,
                }
            }
        };
        rows.push(PlanRow {
            topic,
            partition,
            current: now,
            log_start: low,
            log_end: high,
            target: wanted.clamp(low, high.max(low)),
        });
    }
    Ok(Plan {
        authority,
        partitions: rows,
    })
}

/// (topic, partition, log start, log end) for each partition the specs name; an unknown
/// topic or partition is an error naming it.
pub async fn log_bounds(
    bootstrap: &str,
    specs: Vec<TopicSpec>,
) -> Result<Vec<(String, i32, i64, i64)>> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || watermarks(&bootstrap, &specs))
        .await
        .map_err(|e| Error::Broker(format!("watermark task failed: {e}")))?
}

fn watermarks(bootstrap: &str, specs: &[TopicSpec]) -> Result<Vec<(String, i32, i64, i64)>> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = client_config(bootstrap).create()?;
    let until = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    for spec in specs {
        let count = partition_count(&consumer, &spec.topic, timeout)?;
        if count == 0 {
            return Err(Error::Broker(format!(
                "topic {} does not exist on the broker",
                spec.topic
            )));
        }
        let partitions: Vec<i32> = match &spec.partitions {
            Some(list) => {
                if let Some(p) = list.iter().find(|p| **p >= count) {
                    return Err(Error::Broker(format!(
                        "topic {} has {count} partitions; there is no partition {p}",
                        spec.topic
                    )));
                }
                list.clone()
            }
            None => (0..count).collect(),
        };
        for partition in partitions {
            let (low, high) = crate::kafka::watermarks(&consumer, &spec.topic, partition, until)?;
            out.push((spec.topic.clone(), partition, low, high));
        }
    }
    Ok(out)
}

/// Moves the group to the plan's targets: for a processor group Postgres in one
/// transaction, then Kafka's committed offsets (a failure there is reported; Postgres, the
/// authority, has moved); for any other group, Kafka's committed offsets.
pub async fn execute(pool: &PgPool, bootstrap: &str, group: &str, plan: &Plan) -> Result<()> {
    let rows = &plan.partitions;
    if plan.authority == Authority::Postgres {
        store(pool, group, rows).await?;
    }
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    let rows = rows.to_vec();
    tokio::task::spawn_blocking(move || commit_to_kafka(&bootstrap, &group, &rows))
        .await
        .map_err(|e| Error::Broker(format!("commit task failed: {e}")))?
}

async fn store(pool: &PgPool, group: &str, rows: &[PlanRow]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for row in rows {
        sqlx::query(
            "insert into consumer_offsets (group_id, topic, partition, next_offset)
             values ($1, $2, $3, $4)
             on conflict (group_id, topic, partition) do update
                set next_offset = excluded.next_offset, updated_at = now()",
        )
        .bind(group)
        .bind(&row.topic)
        .bind(row.partition)
        .bind(row.target)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn commit_to_kafka(bootstrap: &str, group: &str, rows: &[PlanRow]) -> Result<()> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for row in rows {
        tpl.add_partition_offset(&row.topic, row.partition, Offset::Offset(row.target))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TopicSpec;

    #[test]
    fn topic_specs_name_a_topic_and_maybe_partitions() {
        let all: TopicSpec = "dhanman.sales.invoices".parse().unwrap();
        assert_eq!(all.partitions, None);
        let some: TopicSpec = "dhanman.sales.invoices:0,3".parse().unwrap();
        assert_eq!(some.topic, "dhanman.sales.invoices");
        assert_eq!(some.partitions, Some(vec![0, 3]));
        for bad in ["t:", "t:x", "t:-1", ":1"] {
            assert!(bad.parse::<TopicSpec>().is_err(), "{bad}");
        }
    }
}
