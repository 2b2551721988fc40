//! The Kafka consumer and its partitions: its configuration, the rebalance callback that
//! seeks to the offsets stored in Postgres on assignment, gathering a batch from the
//! partitions this member holds, and copying offsets to Kafka's committed offsets now and
//! then (only for lag tools: Postgres holds the truth).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhanman_plumbing::kafka::{client_config, client_id};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sqlx::PgPool;

use super::{Incoming, MEMBER_TIMEOUT, Processor, Runtime};
use crate::Result;

/// The partitions this member holds (none between a revocation and the next assignment);
/// shared by the rebalance callback and the loop.
#[derive(Debug, Default)]
pub(super) struct Assignment {
    partitions: HashSet<(String, i32)>,
}

impl Assignment {
    fn set(&mut self, partitions: HashSet<(String, i32)>) {
        self.partitions = partitions;
    }

    fn clear(&mut self) {
        self.partitions.clear();
    }
}

/// Seeks to the offsets stored in Postgres whenever partitions are assigned.
pub(super) struct StoredOffsets {
    pool: PgPool,
    group: String,
    runtime: tokio::runtime::Handle,
    assigned: Arc<Mutex<Assignment>>,
    errors: Mutex<ErrorRun>,
}

/// The consumer's errors since its last record. While the broker is away librdkafka
/// reports one for every failed reconnect, dozens a second across a process's groups: the
/// first of a run is logged, then one line every [`ErrorRun::EVERY`] with how many came
/// since, and one when records flow again.
#[derive(Debug, Default)]
pub(super) struct ErrorRun {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl ErrorRun {
    const EVERY: Duration = Duration::from_secs(10);

    /// An error at `now`: `Some(n)` when it is to be logged, with the `n` errors since the
    /// last line that were not.
    fn error(&mut self, now: Instant) -> Option<u64> {
        match self.logged_at {
            Some(at) if now.duration_since(at) < Self::EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.logged_at = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// A record: `Some(n)` when it ends a run, with the errors not logged.
    fn record(&mut self) -> Option<u64> {
        self.logged_at
            .take()
            .map(|_| std::mem::take(&mut self.unlogged))
    }
}

impl ClientContext for StoredOffsets {}

impl StoredOffsets {
    /// Logs a consumer error, or counts it ([`ErrorRun`]).
    fn error(&self, error: &rdkafka::error::KafkaError) {
        let logged = self
            .errors
            .lock()
            .expect("error run lock")
            .error(Instant::now());
        if let Some(unlogged) = logged {
            tracing::warn!(group = %self.group, %error, unlogged, "consumer error");
        }
    }

    /// Ends a run of errors: a record came.
    fn record(&self) {
        if let Some(unlogged) = self.errors.lock().expect("error run lock").record() {
            tracing::info!(group = %self.group, unlogged, "consumer reading again after errors");
        }
    }

    fn load(
        &self,
        tpl: &TopicPartitionList,
    ) -> std::result::Result<HashMap<(String, i32), i64>, sqlx::Error> {
        let topics: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        // The callback is synchronous and runs inside the consumer's poll on a runtime
        // worker: block_in_place lets the query run there without stalling the runtime.
        let rows: Vec<(String, i32, i64)> = tokio::task::block_in_place(|| {
            self.runtime.block_on(
                sqlx::query_as(
                    "select o.topic, o.partition, o.next_offset
                       from consumer_offsets o
                       join unnest($2::text[], $3::int[]) as a(topic, partition)
                         on a.topic = o.topic and a.partition = o.partition
                      where o.group_id = $1",
                )
                .bind(&self.group)
                .bind(&topics)
                .bind(&partitions)
                .fetch_all(&self.pool),
            )
        })?;
        Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }

    /// Where to start on a partition whose stored offset is `stored`: there, unless it lies
    /// past the log's end (the topic was recreated, or the broker lost records it had
    /// acknowledged). Then from the log's start, each event already applied skipped by its
    /// gate, and the stored offset is brought back to that start: left past the end, it would
    /// only grow again once the log passed it, and a member assigned the partition between
    /// (after a restart) would skip every record below it. A watermark the broker does not
    /// give at once (a leader still moving after a restart) leaves the stored offset as it
    /// is: this runs inside the rebalance, and asking again per partition would hold the
    /// group's assignment back for as long as the look-ups took.
    fn within_log(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
        stored: i64,
    ) -> i64 {
        let Ok((start, end)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
        else {
            return stored;
        };
        if stored <= end {
            return stored;
        }
        tracing::error!(
            group = %self.group, %topic, partition, stored, log_end = end, log_start = start,
            "the stored offset is past the end of the log (topic recreated or broker data \
             lost?); reading the partition from the log's start, events already applied skipped"
        );
        let lowered = tokio::task::block_in_place(|| {
            self.runtime.block_on(
                sqlx::query(
                    "update consumer_offsets set next_offset = $4, updated_at = now()
                      where group_id = $1 and topic = $2 and partition = $3 and next_offset = $5",
                )
                .bind(&self.group)
                .bind(topic)
                .bind(partition)
                .bind(start)
                .bind(stored)
                .execute(&self.pool),
            )
        });
        if let Err(e) = lowered {
            tracing::error!(group = %self.group, %topic, partition, error = %e, "lowering the stored offset");
        }
        start
    }
}

impl ConsumerContext for StoredOffsets {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Where this member starts, which Kafka's copy is set to as well: the offsets
                // the partitions' last owner stored but had not yet copied (a second's worth
                // at most, [`KAFKA_COMMIT_INTERVAL`]) must not look unread to lag tools until
                // the next record comes.
                let mut starts = TopicPartitionList::new();
                match self.load(tpl) {
                    Ok(stored) => {
                        for ((topic, partition), offset) in &stored {
                            let from = self.within_log(base_consumer, topic, *partition, *offset);
                            if let Err(e) =
                                tpl.set_partition_offset(topic, *partition, Offset::Offset(from))
                            {
                                tracing::error!(%topic, partition, error = %e, "setting stored offset");
                            }
                            let _ = starts.add_partition_offset(
                                topic,
                                *partition,
                                Offset::Offset(from),
                            );
                        }
                        tracing::info!(group = %self.group, partitions = tpl.count(), from_postgres = stored.len(), "partitions assigned");
                    }
                    // Kafka's committed offsets trail Postgres' (they are committed after
                    // it), so starting there only re-reads events the gate will skip.
                    Err(e) => {
                        tracing::warn!(error = %e, "stored offsets unavailable, starting from Kafka's committed offsets")
                    }
                }
                let partitions = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.assigned
                    .lock()
                    .expect("assignment lock")
                    .set(partitions);
                if let Err(e) = base_consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                } else if starts.count() > 0
                    && let Err(e) = base_consumer.commit(&starts, CommitMode::Async)
                {
                    tracing::debug!(error = %e, "offset commit to Kafka failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
                self.assigned.lock().expect("assignment lock").clear();
                if let Err(e) = base_consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                self.assigned.lock().expect("assignment lock").clear();
                let _ = base_consumer.unassign();
            }
        }
    }
}

/// The most often a member copies its offsets to Kafka's committed offsets. Postgres holds
/// the offsets that count, stored with each batch; Kafka's copy feeds lag tools only, and a
/// commit per batch (dozens a second per group under load) was broker work for nothing they
/// can see.
pub(super) const KAFKA_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Offsets applied but not yet copied to Kafka: the latest of each partition since the last
/// copy, which goes out once [`KAFKA_COMMIT_INTERVAL`] has passed since the one before (at
/// once after a quiet spell), when the member finds nothing to read, and when it stops.
#[derive(Debug, Default)]
pub(super) struct ToKafka {
    pending: BTreeMap<(String, i32), i64>,
    last: Option<Instant>,
}

impl ToKafka {
    /// Adds a batch's next offsets: later than any pending for the same partition.
    pub(super) fn add(&mut self, offsets: BTreeMap<(String, i32), i64>) {
        self.pending.extend(offsets);
    }

    /// The pending offsets if they are due at `now`.
    pub(super) fn due(&mut self, now: Instant) -> Option<BTreeMap<(String, i32), i64>> {
        let waited = self
            .last
            .is_none_or(|last| now.duration_since(last) >= KAFKA_COMMIT_INTERVAL);
        (waited && !self.pending.is_empty()).then(|| self.take(now))
    }

    /// Every pending offset, due or not (stopping, or nothing left to read).
    pub(super) fn take(&mut self, now: Instant) -> BTreeMap<(String, i32), i64> {
        self.last = Some(now);
        std::mem::take(&mut self.pending)
    }
}

/// Batches of records librdkafka keeps fetched ahead per partition: enough that the next
/// batch is there when one commits (with [`FETCH_QUEUE_BACKOFF_MS`]), against its default
/// of 100,000 records a partition.
const PREFETCH_BATCHES: usize = 2;

/// How soon librdkafka looks again at a partition whose queue was full: its default of a
/// second starves a queue of two batches (the ledger drains one in about 100 ms).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Most bytes one fetch brings per partition (a larger record still comes whole): records
/// keep their fetch's buffer alive until the last of them is processed, so at librdkafka's
/// 1 MiB the buffers were half a ledger's peak memory; 256 KiB keeps the rate
/// (BENCHMARKS.md, "The ledger's memory").
const PARTITION_FETCH_BYTES: &str = "262144";

impl<P: Processor> Runtime<P> {
    pub(super) fn consumer(&self) -> Result<StreamConsumer<StoredOffsets>> {
        let group = self.group_id();
        let context = StoredOffsets {
            pool: self.pool.clone(),
            group: group.clone(),
            runtime: tokio::runtime::Handle::current(),
            assigned: Arc::default(),
            errors: Mutex::default(),
        };
        let mut config = client_config(&self.config.bootstrap_servers);
        config
            .set("group.id", &group)
            .set("client.id", client_id(self.processor.name()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", MEMBER_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set("max.partition.fetch.bytes", PARTITION_FETCH_BYTES)
            .set(
                "queued.min.messages",
                (PREFETCH_BATCHES * self.config.max_batch)
                    .max(1000)
                    .to_string(),
            );
        Ok(config.create_with_context(context)?)
    }

    /// Waits for one record, then gathers more until the batch is full or the linger
    /// time has passed.
    pub(super) async fn collect(&self, consumer: &StreamConsumer<StoredOffsets>) -> Vec<Incoming> {
        let mut batch = Vec::new();
        // Bounded, so the loop gets to look at its assignment now and then.
        match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            Ok(Ok(m)) => batch.push(Incoming::from_message(&m)),
            Ok(Err(e)) => {
                consumer.context().error(&e);
                return batch;
            }
            Err(_) => return batch,
        }
        consumer.context().record();
        let deadline = Instant::now() + self.config.linger;
        while batch.len() < self.config.max_batch {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Incoming::from_message(&m)),
                Ok(Err(e)) => consumer.context().error(&e),
                Err(_) => break,
            }
        }
        // Records of partitions revoked while gathering belong to their new owner now;
        // applying them would be harmless (the gate), but pointless.
        let assigned = consumer.context().assigned.lock().expect("assignment lock");
        batch.retain(|r| {
            assigned
                .partitions
                .contains(&(r.topic.clone(), r.partition))
        });
        batch
    }

    /// Copies `offsets` to Kafka's committed offsets, those of the partitions this member
    /// still holds: a partition revoked meanwhile is its new owner's to commit, and an
    /// older offset sent after the new owner's would move Kafka's copy back.
    pub(super) fn commit_to_kafka(
        &self,
        consumer: &StreamConsumer<StoredOffsets>,
        offsets: BTreeMap<(String, i32), i64>,
    ) {
        let mut tpl = TopicPartitionList::new();
        let assigned = consumer.context().assigned.lock().expect("assignment lock");
        let held = offsets
            .into_iter()
            .filter(|(at, _)| assigned.partitions.contains(at));
        for ((topic, partition), next) in held {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(error = %e, "building commit");
            }
        }
        drop(assigned);
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // Postgres holds the truth; Kafka's copy only feeds lag tools.
            tracing::debug!(error = %e, "offset commit to Kafka failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_go_to_kafka_at_most_once_an_interval_the_latest_of_each_partition() {
        let batch = |offsets: &[(i32, i64)]| -> BTreeMap<(String, i32), i64> {
            offsets
                .iter()
                .map(|&(p, next)| (("invoices".to_string(), p), next))
                .collect()
        };
        let mut to_kafka = ToKafka::default();
        let t0 = Instant::now();
        assert_eq!(to_kafka.due(t0), None, "nothing pending");
        to_kafka.add(batch(&[(0, 10), (1, 5)]));
        assert_eq!(
            to_kafka.due(t0),
            Some(batch(&[(0, 10), (1, 5)])),
            "the first at once"
        );
        to_kafka.add(batch(&[(0, 20)]));
        to_kafka.add(batch(&[(0, 30), (2, 7)]));
        let soon = t0 + KAFKA_COMMIT_INTERVAL / 2;
        assert_eq!(to_kafka.due(soon), None, "within the interval");
        let later = t0 + KAFKA_COMMIT_INTERVAL;
        assert_eq!(to_kafka.due(later), Some(batch(&[(0, 30), (2, 7)])));
        assert_eq!(
            to_kafka.due(later + KAFKA_COMMIT_INTERVAL),
            None,
            "all sent"
        );
        // Stopping, or nothing to read: whatever is pending, due or not.
        to_kafka.add(batch(&[(1, 9)]));
        assert_eq!(to_kafka.take(later), batch(&[(1, 9)]));
        assert!(to_kafka.take(later).is_empty());
    }

    #[test]
    fn a_run_of_errors_is_logged_once_every_ten_seconds_with_the_rest_counted() {
        let mut run = ErrorRun::default();
        let t0 = Instant::now();
        assert_eq!(run.record(), None, "no run to end");
        assert_eq!(run.error(t0), Some(0));
        for i in 1..=50 {
            assert_eq!(run.error(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(run.error(t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(run.error(t0 + Duration::from_secs(11)), None);
        assert_eq!(run.record(), Some(1), "the record ends the run");
        assert_eq!(run.record(), None);
        assert_eq!(
            run.error(t0 + Duration::from_secs(12)),
            Some(0),
            "a new run"
        );
    }
}
