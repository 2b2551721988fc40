//! Broker-facing tools built on the shared client configuration
//! ([`dhanman_plumbing::kafka`]): topics, probes, offsets by time, reading a topic back.

use std::time::Duration;

use dhanman_plumbing::kafka::client_config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::Result;

/// Creates the topics that do not exist yet, with one replica; existing ones are left as
/// they are.
pub async fn ensure_topics(bootstrap: &str, topics: &[String], partitions: i32) -> Result<()> {
    ensure_replicated_topics(bootstrap, topics, partitions, 1).await
}

/// [`ensure_topics`] with `replicas` replicas of each partition.
pub async fn ensure_replicated_topics(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
    replicas: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replicas)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "creating topic failed");
                return Err(rdkafka::error::KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(())
}

/// Deletes topics; one that is already gone is not an error.
pub async fn delete_topics(bootstrap: &str, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "deleting topic failed");
                return Err(rdkafka::error::KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(())
}

/// A client for metadata, watermark, group and timestamp look-ups, shared by the samplers
/// that look every few seconds (one connection to the broker, not one per look).
pub type Probe = std::sync::Arc<ProbeClient>;

/// The probe's consumer (never subscribed: it only looks), and the bootstrap list it came
/// from, for the look-ups that need a client of their own (a group's committed offsets).
pub struct ProbeClient {
    consumer: rdkafka::consumer::BaseConsumer,
    pub bootstrap: String,
}

impl std::ops::Deref for ProbeClient {
    type Target = rdkafka::consumer::BaseConsumer;

    fn deref(&self) -> &Self::Target {
        &self.consumer
    }
}

pub fn probe(bootstrap: &str) -> Result<Probe> {
    let consumer = client_config(bootstrap)
        .set("group.id", "dhanman-probe")
        .set("enable.auto.commit", "false")
        .create()?;
    Ok(std::sync::Arc::new(ProbeClient {
        consumer,
        bootstrap: bootstrap.to_string(),
    }))
}

/// How many partitions `topic` has, from the broker's metadata; 0 when the broker does
/// not know the topic. Blocking.
pub fn partition_count(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<i32> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Broker answers that say a partition's leadership is moving or not yet settled on the
/// broker asked (after a restart, a topic's creation, a reassignment). The protocol marks
/// them retriable, and Kafka's own clients retry them; anything else is an answer.
fn leadership_moving(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
                | RDKafkaErrorCode::OffsetNotAvailable
        )
    )
}

/// Runs a blocking look-up, given the time left, again while the broker answers that
/// leadership is moving, until `until`; then that answer is the error. A look-up started at
/// or after `until` still gets [`LAST_LOOK`]. For tools run once (a rebuild, a replay, an
/// offsets plan); the samplers and a rebalance fail fast instead and look again at their
/// next turn, since a look-up waiting here holds up everything behind it.
pub fn through_leader_changes<T>(
    until: std::time::Instant,
    mut look: impl FnMut(Duration) -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    let mut pauses =
        crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).delays();
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match look(left.max(LAST_LOOK)) {
            Err(e) if leadership_moving(&e) => {
                let pause = pauses.next_delay();
                if std::time::Instant::now() + pause >= until {
                    return Err(e);
                }
                tracing::debug!(error = %e, ?pause, "leadership moving; looking again");
                std::thread::sleep(pause);
            }
            answer => return answer,
        }
    }
}

/// The time a look-up gets when its deadline has passed.
const LAST_LOOK: Duration = Duration::from_secs(1);

/// A partition's low and high watermarks, through leadership changes until `until` (see
/// [`through_leader_changes`]). Blocking.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    until: std::time::Instant,
) -> Result<(i64, i64)> {
    use rdkafka::consumer::Consumer;
    Ok(through_leader_changes(until, |left| {
        consumer.fetch_watermarks(topic, partition, left)
    })?)
}

/// Where a time falls in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLookup {
    /// The first record with a timestamp at or after the time.
    Offset(i64),
    /// Every record is older: the answer is the end of the partition.
    End,
}

/// The timestamps (ms) of the records at the given offsets, one per partition, read
/// together: `consumer` fetches from every partition at once, and is left with no
/// partitions assigned. Partitions whose record cannot be read within a few `timeout`s, or
/// has no timestamp, are left out.
///
/// Left assigned, the consumer would go on fetching, and the broker answers a connection's
/// requests in turn: every later request of the consumer (a watermark, metadata) waited
/// behind a fetch that waits up to `fetch.wait.max.ms` for records, and a lag sample of 60
/// partitions took 24 s instead of 0.2 s.
pub fn record_timestamps(
    consumer: &rdkafka::consumer::BaseConsumer,
    at: &[((String, i32), i64)],
    timeout: Duration,
) -> Result<std::collections::HashMap<(String, i32), i64>> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Message, Offset};
    let mut found: std::collections::HashMap<(String, i32), Option<i64>> =
        std::collections::HashMap::new();
    if at.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for ((topic, partition), offset) in at {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    // A loaded broker can take a while to serve the first fetch.
    let deadline = std::time::Instant::now() + 3 * timeout;
    let read = (|| {
        while found.len() < at.len() && std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                // The first record read from a partition is the one at its offset.
                found
                    .entry((m.topic().to_string(), m.partition()))
                    .or_insert_with(|| m.timestamp().to_millis());
            }
        }
        Ok::<_, crate::Error>(())
    })();
    consumer.unassign()?;
    read?;
    Ok(found
        .into_iter()
        .filter_map(|(at, ts)| Some((at, ts?)))
        .collect())
}

/// The broker's offsets-for-times answer: the first record at or after `timestamp_ms`, or
/// the end when every record is older. Apache Kafka answers this from its time index; the
/// answer is used as given (`broker::offsets_for_times_...` pins what it answers).
pub async fn offset_for_time(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    timestamp_ms: i64,
) -> Result<TimeLookup> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::Offset;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = client_config(&bootstrap)
            .set("group.id", "dhanman-time-lookup")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut query = rdkafka::TopicPartitionList::new();
        query.add_partition_offset(&topic, partition, Offset::Offset(timestamp_ms))?;
        // A partition's own error is the broker's answer for it; `None` when it sent none.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let offset = through_leader_changes(until, |left| {
            let answer = consumer.offsets_for_times(query.clone(), left)?;
            let Some(element) = answer.find_partition(&topic, partition) else {
                return Ok(None);
            };
            element.error()?;
            Ok(Some(element.offset()))
        })
        .map_err(|e| {
            crate::Error::Broker(format!("offsets-for-times on {topic}/{partition}: {e}"))
        })?
        .ok_or_else(|| {
            crate::Error::Broker(format!(
                "no offsets-for-times answer for {topic}/{partition}"
            ))
        })?;
        Ok(match offset {
            Offset::Offset(o) if o >= 0 => TimeLookup::Offset(o),
            _ => TimeLookup::End,
        })
    })
    .await
    .map_err(|e| crate::Error::Broker(format!("lookup task failed: {e}")))?
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// The key's and the headers' bytes as written.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Every record of `topic` from `from` (per partition; the log start where a partition is
/// absent) up to each partition's end as it is now, in partition and offset order, with
/// those ends. Blocking: call it from `spawn_blocking`.
pub fn read_to_end(
    bootstrap: &str,
    topic: &str,
    from: &std::collections::BTreeMap<i32, i64>,
) -> Result<(Vec<StoredRecord>, std::collections::BTreeMap<i32, i64>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;

    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = client_config(bootstrap)
        .set(
            "group.id",
            format!("dhanman-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let count = partition_count(&consumer, topic, timeout)?;
    // One deadline for every partition's look-up: a leader that never settles fails the
    // read once, not once a partition.
    let until = std::time::Instant::now() + timeout;
    let mut ends = BTreeMap::new();
    let mut open = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..count {
        let (low, high) = watermarks(&consumer, topic, partition, until)?;
        let start = from.get(&partition).copied().unwrap_or(low).max(low);
        ends.insert(partition, high);
        if high > start {
            open.insert(partition, high);
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
        }
    }
    let mut records = Vec::new();
    if open.is_empty() {
        return Ok((records, ends));
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + 6 * timeout;
    while !open.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(crate::Error::Broker(format!(
                "{topic}: partitions {:?} did not deliver up to their end",
                open.keys().collect::<Vec<_>>()
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message?;
        let Some(end) = open.get(&m.partition()).copied() else {
            continue;
        };
        if m.offset() + 1 >= end {
            open.remove(&m.partition());
        }
        if m.offset() >= end {
            continue;
        }
        let (headers, _) = dhanman_plumbing::kafka::headers_of(&m);
        records.push(StoredRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m
                .timestamp()
                .to_millis()
                .and_then(chrono::DateTime::from_timestamp_millis),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok((records, ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    fn fails_then_answers(
        failures: usize,
        code: RDKafkaErrorCode,
    ) -> (
        impl FnMut(Duration) -> rdkafka::error::KafkaResult<i64>,
        std::rc::Rc<std::cell::Cell<usize>>,
    ) {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = calls.clone();
        let look = move |_left: Duration| {
            seen.set(seen.get() + 1);
            if seen.get() <= failures {
                Err(KafkaError::MetadataFetch(code))
            } else {
                Ok(42)
            }
        };
        (look, calls)
    }

    #[test]
    fn a_moving_leader_is_looked_up_again_until_it_answers() {
        let (look, calls) = fails_then_answers(3, RDKafkaErrorCode::NotLeaderForPartition);
        assert_eq!(
            through_leader_changes(std::time::Instant::now() + Duration::from_secs(10), look)
                .unwrap(),
            42
        );
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn any_other_answer_is_returned_at_once() {
        let (look, calls) = fails_then_answers(3, RDKafkaErrorCode::UnknownTopicOrPartition);
        let error =
            through_leader_changes(std::time::Instant::now() + Duration::from_secs(10), look)
                .unwrap_err();
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
        );
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_leader_that_never_settles_fails_once_the_time_is_up() {
        let (look, calls) = fails_then_answers(usize::MAX, RDKafkaErrorCode::LeaderNotAvailable);
        let started = std::time::Instant::now();
        let error = through_leader_changes(started + Duration::from_millis(400), look).unwrap_err();
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::LeaderNotAvailable)
        );
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        // 50 + 100 + 200 ms of pauses fit before the deadline, the next 400 would not.
        assert_eq!(calls.get(), 4);
    }
}
