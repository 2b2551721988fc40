//! Consumer lag of every group on the cluster, the pipeline's and any other: per group,
//! topic and partition, the committed offset (for a processor group Postgres's
//! `consumer_offsets`, the processors' authority; for any other group its committed offset
//! in Kafka), the log-end offset (the broker's high watermark), the lag in records, the lag
//! in seconds (the age of the oldest record not yet consumed, read from the broker), and the
//! member holding the partition (consumer id, client id, host), as the group coordinator
//! describes it. Samples kept in `lag_samples` give each group its trend, consumption rate
//! and time to drain, and the samples' window a status per partition and group (see
//! [`status`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sqlx::PgPool;

use crate::Result;
use crate::groups::{self, Authority, Group, Member};
use crate::kafka::{Probe, ProbeClient, partition_count, record_timestamps};

pub mod exposition;
pub mod status;

use status::{Rules, Sample, Status};

/// How far back the trend and the rate look.
pub const TREND_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long samples are kept: the trend's window three times over; a status window must fit
/// in it.
pub const RETENTION: Duration = Duration::from_secs(3 * 5 * 60);
/// Default of [`Scope::max_partitions`].
pub const MAX_PARTITIONS: usize = 5000;

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Next offset the group will read; the log start when it has read nothing yet.
    pub committed: i64,
    /// The group's stored offset where it lies outside the log (below its start, or past
    /// its end: a topic recreated, a broker wiped), which `committed` reads as where the
    /// group's consumer goes next; absent inside the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_outside_log: Option<i64>,
    pub log_end: i64,
    pub lag: i64,
    /// Age of the oldest unconsumed record, 0 when there is none.
    pub lag_seconds: f64,
    /// The member the coordinator assigned the partition to, if any: its consumer id,
    /// host and client id, as `kafka-consumer-groups --describe` shows them.
    pub consumer_id: Option<String>,
    pub host: Option<String>,
    pub client_id: Option<String>,
    /// OK, WARN, STOP, STALL or REWIND, judged over the newest samples (see [`status`]).
    pub status: Status,
    /// How much of the status window there was: below 1 the partition is not judged yet.
    pub complete: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    /// One of the pipeline's processor groups, rather than another client's.
    pub ours: bool,
    /// OK, WARN or ERR (a partition STOP, STALL or REWIND), from the partitions' statuses.
    pub status: Status,
    /// The share of the group's partitions judged on a full window.
    pub complete: f64,
    /// The coordinator's state of the group (`Stable`, `Empty`, ...); none when the broker
    /// could not be asked.
    pub state: Option<String>,
    /// Where the committed offsets come from.
    pub offsets_in: Authority,
    /// The members and what each holds.
    pub members: Vec<Member>,
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
    /// Groups on the cluster not measured because the partitions measured reached
    /// [`Scope::max_partitions`].
    pub groups_left_out: usize,
}

/// Which groups a report covers, and how their statuses are judged.
#[derive(Debug, Clone)]
pub struct Scope {
    /// One group only.
    pub group: Option<String>,
    /// The installation's topic prefix: with one, only partitions of its topics are
    /// reported, and of the groups that store no offsets in Postgres only those named with
    /// the prefix or with a member on its topics are asked for theirs (a shared cluster's
    /// other installations stay out; a group once measured stays while it is sampled).
    /// Empty: every group on the cluster.
    pub topic_prefix: String,
    /// The status evaluator's window and allowed lag.
    pub rules: Rules,
    /// Most partitions measured in one sample: the pipeline's groups always, other groups
    /// (by name) while they fit; those that do not are counted, not measured. Bounds the
    /// samples kept and the gauges' label sets however many groups a cluster has.
    pub max_partitions: usize,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            group: None,
            topic_prefix: String::new(),
            rules: Rules::default(),
            max_partitions: MAX_PARTITIONS,
        }
    }
}

/// Measures every group of `scope`, on every partition it has an offset for, and records
/// the sample.
pub async fn measure(pool: &PgPool, probe: &Probe, scope: &Scope) -> Result<LagReport> {
    let ours: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "select group_id, topic, partition, next_offset from consumer_offsets
          where ($1::text is null or group_id = $1) and starts_with(topic, $2)
          order by group_id, topic, partition",
    )
    .bind(scope.group.as_deref())
    .bind(&scope.topic_prefix)
    .fetch_all(pool)
    .await?;
    // Other groups measured lately: still asked for their offsets when nobody is in them
    // (a stopped consumer is the one to report).
    let since = Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default();
    let known: Vec<(String,)> = sqlx::query_as(
        "select distinct group_id from lag_samples where offsets_in = 'kafka' and sampled_at >= $1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let known: BTreeSet<String> = known.into_iter().map(|(g,)| g).collect();
    let (probe, cluster_scope) = (probe.clone(), scope.clone());
    let (partitions, described, left_out) =
        tokio::task::spawn_blocking(move || look_at_cluster(&probe, ours, &known, &cluster_scope))
            .await
            .map_err(|e| crate::Error::Broker(format!("lag probe failed: {e}")))??;
    let measured_at = Utc::now();
    record(pool, measured_at, &partitions, &described).await?;
    let mut report = report(pool, measured_at, partitions, &described, &scope.rules).await?;
    report.groups_left_out = left_out;
    Ok(report)
}

/// What the cluster says of the groups in scope: our groups' partitions (their offsets from
/// Postgres, `ours`) and every other group's committed offsets in Kafka (those of `known`
/// too, wherever they read), with each partition's holder, the groups as described, and
/// how many groups the cap on partitions left out.
fn look_at_cluster(
    probe: &ProbeClient,
    ours: Vec<(String, String, i32, i64)>,
    known: &BTreeSet<String>,
    scope: &Scope,
) -> Result<(Vec<PartitionLag>, Described, usize)> {
    let prefix = scope.topic_prefix.as_str();
    let our_groups: BTreeSet<String> = ours.iter().map(|r| r.0.clone()).collect();
    let mut described: Described = BTreeMap::new();
    let mut room = scope.max_partitions.saturating_sub(ours.len());
    let mut left_out = 0;
    let mut committed = ours;
    match groups::list(probe) {
        Ok(all) => {
            let topics: BTreeMap<String, i32> = groups::topics(probe)?
                .into_iter()
                .filter(|(t, _)| t.starts_with(prefix))
                .collect();
            for group in all {
                if scope.group.as_ref().is_some_and(|g| g != &group.group) {
                    continue;
                }
                let ours = our_groups.contains(&group.group);
                let near = prefix.is_empty()
                    || group.group.starts_with(prefix)
                    || known.contains(&group.group)
                    || group
                        .members
                        .iter()
                        .any(|m| m.partitions.iter().any(|p| p.starts_with(prefix)));
                if !ours && near && matches!(group.protocol_type.as_str(), "consumer" | "") {
                    if room == 0 {
                        left_out += 1;
                        continue;
                    }
                    match groups::committed(&probe.bootstrap, &group.group, &topics) {
                        Ok(offsets) if offsets.is_empty() => continue,
                        Ok(offsets) if offsets.len() > room => {
                            left_out += 1;
                            continue;
                        }
                        Ok(offsets) => {
                            room -= offsets.len();
                            committed.extend(
                                offsets
                                    .into_iter()
                                    .map(|((t, p), o)| (group.group.clone(), t, p, o)),
                            )
                        }
                        Err(e) => {
                            tracing::warn!(group = %group.group, error = %e, "committed offsets unavailable");
                            continue;
                        }
                    }
                }
                if ours || near {
                    let authority = if ours {
                        Authority::Postgres
                    } else {
                        Authority::Kafka
                    };
                    described.insert(group.group.clone(), (authority, Some(group)));
                }
            }
        }
        // Lag from Postgres alone, without members, beats no lag at all.
        Err(e) => tracing::warn!(error = %e, "the broker did not list its consumer groups"),
    }
    for group in &our_groups {
        described
            .entry(group.clone())
            .or_insert((Authority::Postgres, None));
    }
    let mut partitions = look_at(probe, wanted(&[], &committed), &our_groups, true)?;
    // A processor group reads a partition it has no offset for from the log's start
    // (`auto.offset.reset=earliest`), so such a partition lags by all it holds; of any
    // other group only what it committed is known (as `kafka-consumer-groups` shows it).
    let known: BTreeSet<(&str, &str, i32)> = committed
        .iter()
        .map(|(g, t, p, _)| (g.as_str(), t.as_str(), *p))
        .collect();
    partitions.retain(|p| {
        our_groups.contains(&p.group) || known.contains(&(&p.group, &p.topic, p.partition))
    });
    for p in &mut partitions {
        let holder = described
            .get(&p.group)
            .and_then(|(_, g)| g.as_ref())
            .and_then(|g| g.holder(&p.topic, p.partition));
        if let Some(m) = holder {
            p.consumer_id = Some(m.member_id.clone());
            p.host = Some(m.host.clone());
            p.client_id = Some(m.client_id.clone());
        }
    }
    described.retain(|name, _| partitions.iter().any(|p| &p.group == name));
    if left_out > 0 {
        tracing::warn!(
            left_out,
            max_partitions = scope.max_partitions,
            "consumer groups left out of the lag sample: the cap on partitions is reached"
        );
    }
    Ok((partitions, described, left_out))
}

/// Each reported group: where its offsets come from, and how the coordinator describes it
/// (none when the broker could not be asked).
type Described = BTreeMap<String, (Authority, Option<Group>)>;

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
    let groups: BTreeSet<String> = groups.into_iter().collect();
    let mut partitions =
        tokio::task::spawn_blocking(move || look_at(&probe, wanted, &groups, false))
            .await
            .map_err(|e| crate::Error::Broker(format!("lag probe failed: {e}")))??;
    partitions.retain(|p| p.lag > 0);
    Ok(partitions)
}

/// Partitions grouped into their groups, each with its trend and its status from the
/// samples.
async fn report(
    pool: &PgPool,
    measured_at: DateTime<Utc>,
    mut partitions: Vec<PartitionLag>,
    described: &Described,
    rules: &Rules,
) -> Result<LagReport> {
    judge_windows(pool, &mut partitions, measured_at, rules).await?;
    let mut by_group: BTreeMap<String, Vec<PartitionLag>> = BTreeMap::new();
    for p in partitions {
        by_group.entry(p.group.clone()).or_default().push(p);
    }
    let mut groups = Vec::with_capacity(by_group.len());
    for (group, partitions) in by_group {
        let (authority, described) = described
            .get(&group)
            .cloned()
            .unwrap_or((Authority::Postgres, None));
        let mut lag = summarize(pool, group, partitions).await?;
        lag.offsets_in = authority;
        lag.ours = authority == Authority::Postgres;
        if let Some(g) = described {
            lag.state = Some(g.state);
            lag.members = g.members;
        }
        groups.push(lag);
    }
    Ok(LagReport {
        measured_at,
        groups,
        groups_left_out: 0,
    })
}

/// A `lag_samples` row as [`judge_windows`] reads it.
#[derive(sqlx::FromRow)]
struct WindowRow {
    group_id: String,
    topic: String,
    partition: i32,
    sampled_at: DateTime<Utc>,
    committed: i64,
    log_end: i64,
    held: bool,
}

/// Each partition's status over its newest `rules.window` samples (the newest being the one
/// the partition was read from, when it was recorded), judged as of `now`: when the report
/// was measured.
async fn judge_windows(
    pool: &PgPool,
    partitions: &mut [PartitionLag],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = partitions
        .iter()
        .map(|p| p.group.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let since = Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default();
    let rows: Vec<WindowRow> = sqlx::query_as(
        "select group_id, topic, partition, sampled_at, committed, log_end, held
           from (select group_id, topic, partition, sampled_at, committed, log_end,
                        consumer_id is not null as held,
                        row_number() over (partition by group_id, topic, partition
                                           order by sampled_at desc) as newest
                   from lag_samples where group_id = any($1) and sampled_at >= $2) s
          where newest <= $3
          order by group_id, topic, partition, sampled_at",
    )
    .bind(&groups)
    .bind(since)
    .bind(i64::try_from(rules.window).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    let mut windows: HashMap<(String, String, i32), Vec<Sample>> = HashMap::new();
    for r in rows {
        windows
            .entry((r.group_id, r.topic, r.partition))
            .or_default()
            .push(Sample {
                at: r.sampled_at,
                committed: r.committed,
                log_end: r.log_end,
                held: r.held,
            });
    }
    for p in partitions {
        let window = windows
            .get(&(p.group.clone(), p.topic.clone(), p.partition))
            .map_or(&[][..], Vec::as_slice);
        let judged = status::judge(window, now, rules);
        p.status = judged.status;
        p.complete = judged.complete;
    }
    Ok(())
}

/// A `lag_samples` row as [`latest`] reads it.
#[derive(sqlx::FromRow)]
struct SampleRow {
    sampled_at: DateTime<Utc>,
    group_id: String,
    topic: String,
    partition: i32,
    committed: i64,
    log_end: i64,
    lag_seconds: f64,
    offsets_in: String,
    state: Option<String>,
    consumer_id: Option<String>,
    client_id: Option<String>,
    host: Option<String>,
    stored_outside_log: Option<i64>,
}

/// The newest sample of every group (or one), as the sampler of a running API recorded
/// it, judged by `rules`; empty when nothing has been sampled within the trend window.
pub async fn latest(pool: &PgPool, group: Option<&str>, rules: &Rules) -> Result<LagReport> {
    let since = Utc::now() - chrono::Duration::from_std(TREND_WINDOW).unwrap_or_default();
    let rows: Vec<SampleRow> = sqlx::query_as(
        "select s.sampled_at, s.group_id, s.topic, s.partition, s.committed, s.log_end,
                s.lag_seconds, s.offsets_in, s.state, s.consumer_id, s.client_id, s.host,
                s.stored_outside_log
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
    let measured_at = rows
        .iter()
        .map(|r| r.sampled_at)
        .max()
        .unwrap_or_else(Utc::now);
    // The groups as they were described at the sample: members from the partitions they held.
    let mut described: Described = BTreeMap::new();
    for r in &rows {
        let authority = if r.offsets_in == "kafka" {
            Authority::Kafka
        } else {
            Authority::Postgres
        };
        let (_, group) = described
            .entry(r.group_id.clone())
            .or_insert((authority, None));
        let Some(state) = &r.state else { continue };
        let group = group.get_or_insert_with(|| Group {
            group: r.group_id.clone(),
            state: state.clone(),
            protocol_type: "consumer".into(),
            members: Vec::new(),
        });
        if let (Some(id), Some(client_id), Some(host)) = (&r.consumer_id, &r.client_id, &r.host) {
            let held = format!("{}:{}", r.topic, r.partition);
            match group.members.iter_mut().find(|m| &m.member_id == id) {
                Some(m) => m.partitions.push(held),
                None => group.members.push(Member {
                    member_id: id.clone(),
                    client_id: client_id.clone(),
                    host: host.clone(),
                    partitions: vec![held],
                }),
            }
        }
    }
    let partitions = rows
        .into_iter()
        .map(|r| PartitionLag {
            lag: (r.log_end - r.committed).max(0),
            group: r.group_id,
            topic: r.topic,
            partition: r.partition,
            committed: r.committed,
            stored_outside_log: r.stored_outside_log,
            log_end: r.log_end,
            lag_seconds: r.lag_seconds,
            consumer_id: r.consumer_id,
            host: r.host,
            client_id: r.client_id,
            status: Status::Ok,
            complete: 0.0,
        })
        .collect();
    report(pool, measured_at, partitions, &described, rules).await
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
///
/// An offset outside the log is read where the group's consumer will read next: below the
/// log's start, at the start (the records between are gone); past the end, at the start for
/// a group of `from_start` (a processor's runtime starts such a partition there, see
/// `StoredOffsets::within_log`), so its lag is the whole log rather than 0, and at the end
/// for any other group (what a consumer's default `auto.offset.reset=latest` does).
fn look_at(
    consumer: &BaseConsumer,
    wanted: Wanted,
    from_start: &BTreeSet<String>,
    ages: bool,
) -> Result<Vec<PartitionLag>> {
    let timeout = Duration::from_secs(10);
    let mut out = Vec::new();
    for ((group, topic), known) in wanted {
        let count = partition_count(consumer, &topic, timeout)?;
        for partition in 0..count.max(known.keys().max().map_or(0, |p| p + 1)) {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            let stored = known.get(&partition).copied().flatten();
            let committed = match stored {
                Some(next) if next > high && from_start.contains(&group) => low,
                Some(next) => next.clamp(low, high.max(low)),
                None => low,
            };
            let stored_outside_log = stored.filter(|&next| next < low || next > high);
            let lag = (high - committed).max(0);
            out.push(PartitionLag {
                group: group.clone(),
                topic: topic.clone(),
                partition,
                committed,
                stored_outside_log,
                log_end: high,
                lag,
                lag_seconds: 0.0,
                consumer_id: None,
                host: None,
                client_id: None,
                status: Status::Ok,
                complete: 0.0,
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

async fn record(
    pool: &PgPool,
    at: DateTime<Utc>,
    partitions: &[PartitionLag],
    described: &Described,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    for p in partitions {
        let (authority, group) = described
            .get(&p.group)
            .map_or((Authority::Postgres, None), |(a, g)| (*a, g.as_ref()));
        sqlx::query(
            "insert into lag_samples
                 (sampled_at, group_id, topic, partition, committed, log_end, lag_seconds,
                  offsets_in, state, consumer_id, client_id, host, stored_outside_log)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             on conflict do nothing",
        )
        .bind(at)
        .bind(&p.group)
        .bind(&p.topic)
        .bind(p.partition)
        .bind(p.committed)
        .bind(p.log_end)
        .bind(p.lag_seconds)
        .bind(authority.as_str())
        .bind(group.map(|g| g.state.as_str()))
        .bind(p.consumer_id.as_deref())
        .bind(p.client_id.as_deref())
        .bind(p.host.as_deref())
        .bind(p.stored_outside_log)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("delete from lag_samples where sampled_at < $1")
        .bind(at - chrono::Duration::from_std(RETENTION).unwrap_or_default())
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
    let complete = if partitions.is_empty() {
        0.0
    } else {
        partitions.iter().filter(|p| p.complete >= 1.0).count() as f64 / partitions.len() as f64
    };
    Ok(GroupLag {
        group,
        ours: true,
        status: status::group_status(partitions.iter().map(|p| p.status)),
        complete,
        state: None,
        offsets_in: Authority::Postgres,
        members: Vec::new(),
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

/// One sample for `/metrics`: measures, records and exports; a failure is logged and
/// leaves the previous values.
pub async fn sample(pool: &PgPool, probe: &Probe, scope: &Scope) {
    match measure(pool, probe, scope).await {
        Ok(report) => exposition::publish(&report),
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
