//! The consumer runtime, written once for every processor.
//!
//! For each batch it opens one Postgres transaction holding: the processor's effects
//! (applied only for events it has never applied: `processed_events` is the gate), any
//! outbox rows (emitted events, dead letters) and the group's next offsets. On assignment
//! it seeks to the stored offsets. After the commit it commits the same offsets to Kafka,
//! only so that lag tools see progress.
//!
//! Failures are classified in one place ([`classify_db`], [`dhanman_schemas::Error::is_transient`]):
//! transient ones (database or registry down) retry the whole batch with backoff and never
//! advance; poison records (undecodable, invalid, refused by a constraint) go to
//! `<topic>.dlq` through the outbox with headers naming the error and their origin, and
//! the partition keeps flowing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use dhanman_producers::trace::{self, TraceParent};
use dhanman_schemas::{Codec, Event, topics};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use serde_json::{Value as Json, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::stop::Stop;
use crate::{Error, Result};

/// Records per transaction unless configured: large enough that per-transaction costs
/// (round trips, commit, the balance rows every batch updates) stay small per event, small
/// enough that a batch commits in a few hundred milliseconds (`BENCHMARKS.md`).
pub const DEFAULT_MAX_BATCH: usize = 2000;

/// Concurrent transactions a batch is split into (by partition) unless configured. One:
/// on two cores more lanes measured no faster, and with more than one, records of one
/// batch on different partitions commit in separate transactions, so a consistency
/// token (which covers its own event) may be answered before an earlier event of another
/// partition is applied.
pub const DEFAULT_LANES: usize = 1;

/// Prometheus metrics of the runtime.
pub mod metric {
    /// Histogram, label `processor`: seconds from a batch (lane) being handed to the
    /// runtime to its commit, retries included.
    pub const BATCH_DURATION: &str = "dhanman_processor_batch_duration_seconds";
    /// Counter, labels `processor` and `outcome` (`applied`, `skipped_duplicate`,
    /// `dead_lettered`): records of committed batches.
    pub const EVENTS: &str = "dhanman_processor_events_total";
    /// Counter, labels `processor` and `class` (`transient`: a batch attempt failed and is
    /// retried; `poison`: a record was dead-lettered).
    pub const FAILURES: &str = "dhanman_processor_failures_total";
    /// Counter, label `processor`: batch attempts retried after a transient failure.
    pub const RETRIES: &str = "dhanman_processor_retries_total";
    /// Counter, labels `topic` (the dead-letter topic, physical name), `processor` and
    /// `class` (`undecodable`, `invalid`, `rejected`): records dead-lettered.
    pub const DLQ_RECORDS: &str = "dhanman_dlq_records_total";

    /// Makes a processor's series visible at zero before anything happens.
    pub(super) fn register(processor: &str) {
        for outcome in ["applied", "skipped_duplicate", "dead_lettered"] {
            metrics::counter!(EVENTS, "processor" => processor.to_string(), "outcome" => outcome)
                .increment(0);
        }
        for class in ["transient", "poison"] {
            metrics::counter!(FAILURES, "processor" => processor.to_string(), "class" => class)
                .increment(0);
        }
        metrics::counter!(RETRIES, "processor" => processor.to_string()).increment(0);
    }
}

/// One record as read from Kafka, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Incoming {
    pub fn from_message<M: Message>(m: &M) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A processor: what it reads and what it does with new events, inside the batch's
/// transaction. Everything else (batching, offsets, retries, DLQ) is the runtime's.
pub trait Processor: Send + Sync + 'static {
    /// Stable name: the consumer group is `dhanman.<name>` and `processed_events` rows
    /// carry it.
    fn name(&self) -> &str;
    fn topics(&self) -> Vec<String>;
    /// Applies events this processor has never applied, in offset order per partition.
    /// Must write only through `conn`. A [`ApplyError::Transient`] failure retries the
    /// batch; a [`ApplyError::Poison`] one (and a panic) marks the batch's events for
    /// one-by-one isolation, and the one that fails alone is dead-lettered.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> impl Future<Output = std::result::Result<(), ApplyError>> + Send;
}

/// Transient (retry the batch, never advance) or poison (dead-letter the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Poison,
}

/// Why a processor could not apply events: the one split every processor's failures go
/// through.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The same transaction may succeed later (the database is down, a serialization
    /// failure): the batch is retried and its offsets do not move.
    #[error("{0}")]
    Transient(String),
    /// The events cannot be applied as they are, now or later: the record that fails
    /// alone is dead-lettered and the partition moves on.
    #[error("{0}")]
    Poison(String),
}

impl ApplyError {
    pub fn class(&self) -> Class {
        match self {
            ApplyError::Transient(_) => Class::Transient,
            ApplyError::Poison(_) => Class::Poison,
        }
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        match classify_db(&e) {
            Class::Transient => ApplyError::Transient(format!("database: {e}")),
            Class::Poison => ApplyError::Poison(format!("database: {e}")),
        }
    }
}

/// A command or outbox write refused for what it holds (not the database's state) is
/// poison; a database failure is classed as the database's.
impl From<dhanman_producers::Error> for ApplyError {
    fn from(e: dhanman_producers::Error) -> Self {
        match e {
            dhanman_producers::Error::Database(db) => db.into(),
            other => ApplyError::Poison(other.to_string()),
        }
    }
}

/// What a panic carried, for the dead letter's reason.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The one place that decides whether a database failure is worth retrying.
pub fn classify_db(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Class::Transient,
        sqlx::Error::Database(db) => match db.code().as_deref().map(|c| &c[..2]) {
            // connection, serialization/deadlock, resources, operator intervention,
            // system errors: the same transaction may succeed later.
            Some("08" | "40" | "53" | "57" | "58") => Class::Transient,
            _ => Class::Poison,
        },
        _ => Class::Poison,
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub bootstrap_servers: String,
    /// Consumer group; defaults to `<topic prefix>dhanman.<processor name>`.
    pub group_id: Option<String>,
    pub max_batch: usize,
    /// Concurrent transactions per batch, by partition (see [`Runtime::run`]).
    pub lanes: usize,
    /// How long to wait for more records once a batch has its first one.
    pub linger: Duration,
    pub max_backoff: Duration,
    /// Physical topics are `<prefix><logical name>`; processors and the outbox speak
    /// logical names.
    pub topic_prefix: String,
}

impl RuntimeConfig {
    pub fn new(bootstrap_servers: &str) -> Self {
        RuntimeConfig {
            bootstrap_servers: bootstrap_servers.to_string(),
            group_id: None,
            max_batch: DEFAULT_MAX_BATCH,
            lanes: DEFAULT_LANES,
            linger: Duration::from_millis(20),
            max_backoff: Duration::from_secs(5),
            topic_prefix: String::new(),
        }
    }
}

/// The consumer group of processor `name` in the installation whose topics start with
/// `topic_prefix`, unless its [`RuntimeConfig::group_id`] says otherwise.
pub fn default_group_id(topic_prefix: &str, name: &str) -> String {
    format!("{topic_prefix}dhanman.{name}")
}

/// The partitions this member holds (none between a revocation and the next assignment);
/// shared by the rebalance callback and the loop.
#[derive(Debug, Default)]
struct Assignment {
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
struct StoredOffsets {
    pool: PgPool,
    group: String,
    runtime: tokio::runtime::Handle,
    assigned: Arc<Mutex<Assignment>>,
}

impl ClientContext for StoredOffsets {}

impl StoredOffsets {
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
                match self.load(tpl) {
                    Ok(stored) => {
                        for ((topic, partition), offset) in &stored {
                            if let Err(e) =
                                tpl.set_partition_offset(topic, *partition, Offset::Offset(*offset))
                            {
                                tracing::error!(%topic, partition, error = %e, "setting stored offset");
                            }
                            // Past the log's end, the member would wait for records that
                            // will never come (the topic was recreated or the broker lost
                            // data): say so, and how to move on.
                            let end = base_consumer
                                .fetch_watermarks(topic, *partition, Duration::from_secs(5))
                                .map(|(_, high)| high);
                            if let Ok(end) = end
                                && *offset > end
                            {
                                tracing::error!(
                                    group = %self.group, %topic, partition, stored = offset, log_end = end,
                                    "the stored offset is past the end of the log (topic recreated or \
                                     broker data lost?); nothing is read here until the log grows \
                                     past it: see `dhanman offsets reset --group {} --topic {topic}:{partition}`",
                                    self.group
                                );
                            }
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

/// Outcome of one batch, for logs, tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
}

pub struct Runtime<P> {
    processor: Arc<P>,
    pool: PgPool,
    codec: Arc<Codec>,
    config: RuntimeConfig,
    /// Off for a replay: its batches must not move the live group's offsets.
    store_group_offsets: bool,
}

/// What a replay finds for one record type in a range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TypeCounts {
    pub in_range: usize,
    pub already_applied: usize,
    pub would_apply: usize,
}

/// What a replay finds in a range: per record type, and the records no type reads.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Survey {
    pub by_type: BTreeMap<String, TypeCounts>,
    pub poison: usize,
}

impl Survey {
    pub fn add(&mut self, other: &Survey) {
        for (name, c) in &other.by_type {
            let mine = self.by_type.entry(name.clone()).or_default();
            mine.in_range += c.in_range;
            mine.already_applied += c.already_applied;
            mine.would_apply += c.would_apply;
        }
        self.poison += other.poison;
    }
}

/// A record after decoding: an event to apply, or the reason it is poison.
enum Decoded {
    Event(Box<Event>),
    Poison { class: &'static str, reason: String },
}

struct Gathered {
    batch: Vec<Incoming>,
    decoded: Option<Vec<Decoded>>,
}

impl<P: Processor> Runtime<P> {
    pub fn new(processor: P, pool: PgPool, codec: Arc<Codec>, config: RuntimeConfig) -> Self {
        Runtime {
            processor: Arc::new(processor),
            pool,
            codec,
            config,
            store_group_offsets: true,
        }
    }

    pub fn group_id(&self) -> String {
        self.config
            .group_id
            .clone()
            .unwrap_or_else(|| default_group_id(&self.config.topic_prefix, self.processor.name()))
    }

    fn consumer(&self) -> Result<StreamConsumer<StoredOffsets>> {
        let group = self.group_id();
        let context = StoredOffsets {
            pool: self.pool.clone(),
            group: group.clone(),
            runtime: tokio::runtime::Handle::current(),
            assigned: Arc::default(),
        };
        let mut config: ClientConfig = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("broker.address.family", "v4")
            .set("group.id", &group)
            .set(
                "client.id",
                dhanman_connectors::kafka::client_id(self.processor.name()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", MEMBER_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false");
        Ok(config.create_with_context(context)?)
    }

    /// Consumes until the task is dropped or the consumer fails for good. Partitions come
    /// and go with the group coordinator's assignments; a member that dies is replaced by
    /// the coordinator once its session times out ([`MEMBER_TIMEOUT`]).
    pub async fn run(self) -> Result<()> {
        self.run_until(Stop::never()).await
    }

    /// [`Runtime::run`] until `stop` is asked for; then the batch in hand is finished, the
    /// member leaves its group (its partitions go to the other members at once), and this
    /// returns `Ok`.
    pub async fn run_until(self, stop: Stop) -> Result<()> {
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(Error::Config(
                "the consumer runtime needs tokio's multi-thread runtime".into(),
            ));
        }
        let consumer = Arc::new(self.consumer()?);
        let this = Arc::new(self);
        let consumed = this.clone().consume(consumer.clone(), stop).await;
        if consumed.is_ok() {
            this.leave(consumer).await;
        }
        consumed
    }

    /// Leaves the group and closes the consumer, waiting at most [`LEAVE_TIMEOUT`] for the
    /// broker: past that the session timeout does the rest.
    async fn leave(&self, consumer: Arc<StreamConsumer<StoredOffsets>>) {
        let group = self.group_id();
        tracing::info!(%group, "stopping: leaving the consumer group");
        consumer.unsubscribe();
        // Closing blocks (librdkafka serves the revocation and waits for the coordinator's
        // answer), so it runs on a thread of its own; the consumer is dropped there.
        let (closed, was_closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
        match tokio::time::timeout(LEAVE_TIMEOUT, was_closed).await {
            Ok(_) => tracing::info!(%group, "left the consumer group"),
            Err(_) => tracing::warn!(
                %group,
                waited = ?LEAVE_TIMEOUT,
                "the broker did not confirm the leave in time; the group's session timeout \
                 will hand this member's partitions on"
            ),
        }
    }

    /// The loop of [`Runtime::run`]. The next batch is read and decoded by a task of its
    /// own, on another worker thread, while this one's transaction runs: decoding is the
    /// consumer's main CPU cost, and the transaction mostly waits on Postgres.
    async fn consume(
        self: Arc<Self>,
        consumer: Arc<StreamConsumer<StoredOffsets>>,
        mut stop: Stop,
    ) -> Result<()> {
        // Stopped with the loop: the consumer must not outlive it in a task of its own.
        let read_ahead = |this: &Arc<Self>| {
            let (this, consumer) = (this.clone(), consumer.clone());
            AbortOnDrop(tokio::spawn(async move { this.gather(&consumer).await }))
        };
        let topics: Vec<String> = self
            .processor
            .topics()
            .iter()
            .map(|t| format!("{}{t}", self.config.topic_prefix))
            .collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        metric::register(self.processor.name());
        tracing::info!(group = %self.group_id(), topics = ?topics, "consumer started");
        // Stopping between batches only: what was read but not applied is read again by
        // the partition's next owner, from the offsets stored with the last batch.
        let mut gathered = tokio::select! {
            gathered = self.gather(&consumer) => gathered,
            () = stop.requested() => return Ok(()),
        };
        loop {
            if stop.is_requested() {
                return Ok(());
            }
            let Gathered { batch, decoded } = gathered;
            if batch.is_empty() {
                gathered = tokio::select! {
                    gathered = self.gather(&consumer) => gathered,
                    () = stop.requested() => return Ok(()),
                };
                continue;
            }
            // The next batch is read and decoded while this one's transaction runs. Should
            // a rebalance move a partition meanwhile, its records may be applied by two
            // members: the gate keeps that harmless, as it does for any redelivery.
            let offsets = next_offsets(&batch);
            let work = async {
                let mut lanes = self.lanes(batch, decoded);
                let reports =
                    futures_util::future::join_all(lanes.iter_mut().map(|(records, decoded)| {
                        self.process_with_retry(records, decoded.take())
                    }))
                    .await;
                tracing::debug!(?reports, "batch committed");
                self.commit_to_kafka(&consumer, offsets);
            };
            let mut ahead = read_ahead(&self);
            let ((), next) = tokio::join!(work, &mut ahead.0);
            // Decoding catches its own panics (a record's are its dead letter), so a failed
            // read-ahead is a defect of the runtime: stop, and let the next start read on
            // from the stored offsets, rather than take the process down with a panic.
            gathered = match next {
                Ok(next) => next,
                Err(e) => return Err(Error::Config(format!("reading ahead failed: {e}"))),
            };
        }
    }

    /// A batch split by partition into at most `config.lanes` parts, each applied in its own
    /// transaction, concurrently: a partition's records stay in one part and in order, and
    /// each part stores the offsets of its own partitions. Postgres then works on more than
    /// one core. The balance rows the parts share are updated last and in key order, so
    /// the parts wait on each other only briefly and never deadlock.
    fn lanes(
        &self,
        batch: Vec<Incoming>,
        decoded: Option<Vec<Decoded>>,
    ) -> Vec<(Vec<Incoming>, Option<Vec<Decoded>>)> {
        if self.config.lanes <= 1 {
            return vec![(batch, decoded)];
        }
        let partitions: BTreeSet<(&str, i32)> = batch
            .iter()
            .map(|r| (r.topic.as_str(), r.partition))
            .collect();
        let lane_of: HashMap<(&str, i32), usize> = partitions
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, i % self.config.lanes.max(1)))
            .collect();
        let count = lane_of.values().max().map_or(0, |m| m + 1);
        let mut lanes: Vec<(Vec<Incoming>, Option<Vec<Decoded>>)> = (0..count)
            .map(|_| (Vec::new(), decoded.as_ref().map(|_| Vec::new())))
            .collect();
        let assigned: Vec<usize> = batch
            .iter()
            .map(|r| lane_of[&(r.topic.as_str(), r.partition)])
            .collect();
        let mut decoded = decoded.map(Vec::into_iter);
        for (record, lane) in batch.into_iter().zip(assigned) {
            let lane = &mut lanes[lane];
            if let (Some(all), Some(mine)) = (decoded.as_mut(), lane.1.as_mut()) {
                mine.extend(all.next());
            }
            lane.0.push(record);
        }
        lanes
    }

    /// The next batch, decoded ahead of its transaction. A transient failure (registry
    /// down) leaves it undecoded; the transaction's retry loop decodes it again.
    async fn gather(&self, consumer: &StreamConsumer<StoredOffsets>) -> Gathered {
        let batch = self.collect(consumer).await;
        let decoded = self.decode_all(&batch).await.ok();
        Gathered { batch, decoded }
    }

    async fn decode_all(&self, batch: &[Incoming]) -> Result<Vec<Decoded>> {
        let mut decoded = Vec::with_capacity(batch.len());
        for record in batch {
            decoded.push(self.decode(record).await?);
        }
        Ok(decoded)
    }

    /// Waits for one record, then gathers more until the batch is full or the linger
    /// time has passed.
    async fn collect(&self, consumer: &StreamConsumer<StoredOffsets>) -> Vec<Incoming> {
        let mut batch = Vec::new();
        // Bounded, so the loop gets to look at its assignment now and then.
        match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            Ok(Ok(m)) => batch.push(Incoming::from_message(&m)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                return batch;
            }
            Err(_) => return batch,
        }
        let deadline = Instant::now() + self.config.linger;
        while batch.len() < self.config.max_batch {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Incoming::from_message(&m)),
                Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
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

    fn commit_to_kafka(
        &self,
        consumer: &StreamConsumer<StoredOffsets>,
        offsets: BTreeMap<(String, i32), i64>,
    ) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(error = %e, "building commit");
            }
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // Postgres holds the truth; Kafka's copy only feeds lag tools.
            tracing::debug!(error = %e, "offset commit to Kafka failed");
        }
    }

    /// Processes a batch until it commits, backing off on transient failures.
    async fn process_with_retry(
        &self,
        batch: &[Incoming],
        mut decoded: Option<Vec<Decoded>>,
    ) -> BatchReport {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1u32;
        let started = Instant::now();
        let processor = self.processor.name().to_string();
        loop {
            match self.process(batch, decoded.take(), attempt).await {
                Ok(report) => {
                    metrics::histogram!(metric::BATCH_DURATION, "processor" => processor)
                        .record(started.elapsed().as_secs_f64());
                    return report;
                }
                Err(e) => {
                    metrics::counter!(metric::FAILURES, "processor" => processor.clone(), "class" => "transient")
                        .increment(1);
                    metrics::counter!(metric::RETRIES, "processor" => processor.clone())
                        .increment(1);
                    let jitter = Duration::from_millis(rand::random_range(
                        0..=backoff.as_millis() as u64 / 4,
                    ));
                    tracing::warn!(error = %e, attempt, retry_in = ?(backoff + jitter), records = batch.len(), "transient failure, batch will be retried");
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    /// A record decoded, or the reason it is poison. No record can take the processor down:
    /// a panic while decoding one (a defect, here or in a library) makes that record poison.
    async fn decode(&self, record: &Incoming) -> Result<Decoded> {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(self.decode_unguarded(record))
            .catch_unwind()
            .await
        {
            Ok(decoded) => decoded,
            Err(payload) => Ok(Decoded::Poison {
                class: "undecodable",
                reason: format!("decoding panicked: {}", panic_message(&*payload)),
            }),
        }
    }

    async fn decode_unguarded(&self, record: &Incoming) -> Result<Decoded> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(Decoded::Poison {
                class: "undecodable",
                reason: "record has no value".into(),
            });
        };
        let decoded = match self.codec.decode(payload).await {
            Ok(d) => d,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                return Ok(Decoded::Poison {
                    class: "undecodable",
                    reason: e.to_string(),
                });
            }
        };
        match Event::from_json(&decoded.name, decoded.json) {
            Ok(event) => Ok(Decoded::Event(Box::new(event))),
            Err(e) => Ok(Decoded::Poison {
                class: "invalid",
                reason: e.to_string(),
            }),
        }
    }

    /// One attempt at a batch: one transaction, or an error that is transient.
    async fn process(
        &self,
        batch: &[Incoming],
        decoded: Option<Vec<Decoded>>,
        attempt: u32,
    ) -> Result<BatchReport> {
        let started = Instant::now();
        let decoded = match decoded {
            Some(decoded) => decoded,
            None => self.decode_all(batch).await?,
        };
        let decoded_at = Instant::now();
        let mut tx = self.pool.begin().await.map_err(Error::Database)?;
        let mut report = BatchReport {
            records: batch.len(),
            ..BatchReport::default()
        };
        let name = self.processor.name().to_string();

        // Events in this batch, first occurrence of each id only.
        let mut seen = HashSet::new();
        let mut candidates: Vec<(usize, &Event)> = Vec::new();
        for (i, d) in decoded.iter().enumerate() {
            if let Decoded::Event(event) = d
                && seen.insert(event.envelope().event_id)
            {
                candidates.push((i, event));
            }
        }
        let mut poison: BTreeMap<usize, (&'static str, String)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decoded::Poison { class, reason } => Some((i, (*class, reason.clone()))),
                Decoded::Event(_) => None,
            })
            .collect();

        let fresh = mark_processed(&mut tx, &name, batch, &candidates).await?;
        report.duplicates = decoded.len() - poison.len() - fresh.len();
        let events: Vec<&Event> = fresh.iter().map(|(_, e)| *e).collect();
        // Each event continues the trace its record carries (a new one if it carries none);
        // what `apply` writes to the outbox for it is a child of that span.
        let spans = consumer_spans(batch, &fresh);
        for (i, event) in &fresh {
            let record = &batch[*i];
            let span = spans.get(&event.envelope().event_id);
            tracing::debug!(
                processor = %name, topic = %record.topic, partition = record.partition,
                offset = record.offset, event_id = %event.envelope().event_id,
                correlation_id = %event.envelope().correlation_id,
                trace_id = %span.map(TraceParent::trace_id).unwrap_or_default(),
                traceparent = %span.map(ToString::to_string).unwrap_or_default(),
                "applying event"
            );
        }
        let applied =
            trace::in_batch(spans.clone(), self.apply_in_savepoint(&mut tx, &events)).await;
        match applied {
            Ok(()) => report.applied = fresh.len(),
            Err(e) if e.class() == Class::Transient => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, events = fresh.len(), "batch refused by the database, isolating the poison record");
                // The savepoint rolled back the effects; the gate rows stay. Undo them and
                // go one event at a time, each with its own gate row and savepoint.
                unmark(&mut tx, &name, &events).await?;
                for (i, event) in &fresh {
                    let one = [*event];
                    let single: [(usize, &Event); 1] = [(*i, *event)];
                    let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                    mark_processed(&mut sp, &name, batch, &single).await?;
                    let applied =
                        trace::in_batch(spans.clone(), self.apply_guarded(&mut sp, &one)).await;
                    match applied {
                        Ok(()) => {
                            sp.commit().await?;
                            report.applied += 1;
                        }
                        Err(e) if e.class() == Class::Transient => return Err(e.into()),
                        Err(e) => {
                            sp.rollback().await?;
                            poison.insert(*i, ("rejected", e.to_string()));
                        }
                    }
                }
            }
        }

        let mut dead_lettered = Vec::with_capacity(poison.len());
        for (i, (class, reason)) in &poison {
            let record = &batch[*i];
            let correlation_id = record.header("correlation_id").unwrap_or_default();
            let traceparent = record.header(trace::HEADER).unwrap_or_default();
            tracing::warn!(
                topic = %record.topic, partition = record.partition, offset = record.offset,
                correlation_id = %correlation_id, %traceparent, class, reason = %reason,
                "dead-lettering record"
            );
            let logical = record
                .topic
                .strip_prefix(&self.config.topic_prefix)
                .unwrap_or(&record.topic);
            let letter = DeadLetter {
                record,
                logical_topic: logical,
                class,
                reason,
                attempts: attempt,
            };
            dead_letter(&mut tx, &self.group_id(), &name, letter).await?;
            dead_lettered.push((topics::dlq(&record.topic), *class));
        }
        report.dead_lettered = poison.len();

        if self.store_group_offsets {
            store_offsets(&mut tx, &self.group_id(), batch).await?;
        }
        if report.applied > 0 {
            // Wakes the API's queries waiting on a consistency token, at the commit.
            sqlx::query("select pg_notify('dhanman_applied', $1)")
                .bind(&name)
                .execute(&mut *tx)
                .await
                .map_err(Error::Database)?;
        }
        tx.commit().await.map_err(Error::Database)?;
        record_outcomes(&name, &report, &dead_lettered);
        tracing::debug!(
            records = batch.len(),
            decode_ms = (decoded_at - started).as_secs_f64() * 1000.0,
            transaction_ms = decoded_at.elapsed().as_secs_f64() * 1000.0,
            "batch timings"
        );
        Ok(report)
    }

    /// For a replay, which reads with a consumer of its own: batches are applied exactly as
    /// the live group applies them (gate, effects, dead letters), but the group's stored
    /// offsets are left alone.
    pub fn for_replay(mut self) -> Self {
        self.store_group_offsets = false;
        self
    }

    /// What applying `batch` would do, per record type, without doing it: each event is
    /// already applied (its gate row exists) or would be.
    pub async fn survey(&self, batch: &[Incoming]) -> Result<Survey> {
        let decoded = self.decode_all(batch).await?;
        let mut survey = Survey::default();
        let mut events = Vec::new();
        for d in &decoded {
            match d {
                Decoded::Event(e) => events.push(e.as_ref()),
                Decoded::Poison { .. } => survey.poison += 1,
            }
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.envelope().event_id).collect();
        let applied: HashSet<Uuid> = sqlx::query_as::<_, (Uuid,)>(
            "select event_id from processed_events where processor = $1 and event_id = any($2)",
        )
        .bind(self.processor.name())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::Database)?
        .into_iter()
        .map(|(id,)| id)
        .collect();
        let mut seen = HashSet::new();
        for event in events {
            let counts = survey.by_type.entry(event.name().to_string()).or_default();
            counts.in_range += 1;
            let id = event.envelope().event_id;
            if applied.contains(&id) || !seen.insert(id) {
                counts.already_applied += 1;
            } else {
                counts.would_apply += 1;
            }
        }
        Ok(survey)
    }

    /// Applies a batch as the live group would, retrying transient failures.
    pub async fn apply_batch(&self, batch: &[Incoming]) -> BatchReport {
        self.process_with_retry(batch, None).await
    }

    async fn apply_in_savepoint(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        events: &[&Event],
    ) -> std::result::Result<(), ApplyError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
        self.apply_guarded(&mut sp, events).await?;
        Ok(sp.commit().await?)
    }

    /// The processor's `apply`, with a panic inside it (a defect that some record brings
    /// out) taken as poison: the batch is isolated and the record that panics alone is
    /// dead-lettered, instead of the processor going down on it again after every restart.
    async fn apply_guarded(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> std::result::Result<(), ApplyError> {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(self.processor.apply(conn, events))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied,
            Err(payload) => Err(ApplyError::Poison(format!(
                "applying panicked: {}",
                panic_message(&*payload)
            ))),
        }
    }
}

/// The consumers' session timeout: how long after its last heartbeat the group coordinator
/// counts a member as gone (SIGKILL, a crash, a lost network) and hands its partitions on.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping member waits for the broker to confirm it left its group.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A task stopped when its handle is dropped, so a part's helpers end with it.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The consumer span of each event about to be applied: a child of the `traceparent` its
/// record carries, or a new trace when it carries none (or a malformed one).
fn consumer_spans(batch: &[Incoming], fresh: &[(usize, &Event)]) -> HashMap<Uuid, TraceParent> {
    fresh
        .iter()
        .map(|(i, event)| {
            let span = batch[*i]
                .header(trace::HEADER)
                .and_then(|v| TraceParent::parse(&v))
                .map_or_else(TraceParent::new_root, |parent| parent.child());
            (event.envelope().event_id, span)
        })
        .collect()
}

/// Metrics of a committed batch.
fn record_outcomes(processor: &str, report: &BatchReport, dead_lettered: &[(String, &str)]) {
    for (outcome, n) in [
        ("applied", report.applied),
        ("skipped_duplicate", report.duplicates),
        ("dead_lettered", report.dead_lettered),
    ] {
        if n > 0 {
            metrics::counter!(metric::EVENTS, "processor" => processor.to_string(), "outcome" => outcome)
                .increment(n as u64);
        }
    }
    for (topic, class) in dead_lettered {
        metrics::counter!(metric::FAILURES, "processor" => processor.to_string(), "class" => "poison")
            .increment(1);
        metrics::counter!(
            metric::DLQ_RECORDS,
            "topic" => topic.clone(),
            "processor" => processor.to_string(),
            "class" => class.to_string()
        )
        .increment(1);
    }
}

/// Inserts gate rows; returns the candidates this processor had not applied before.
async fn mark_processed<'e>(
    conn: &mut PgConnection,
    processor: &str,
    batch: &[Incoming],
    candidates: &[(usize, &'e Event)],
) -> Result<Vec<(usize, &'e Event)>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = candidates
        .iter()
        .map(|(_, e)| e.envelope().event_id)
        .collect();
    let topics: Vec<&str> = candidates
        .iter()
        .map(|(i, _)| batch[*i].topic.as_str())
        .collect();
    let partitions: Vec<i32> = candidates
        .iter()
        .map(|(i, _)| batch[*i].partition)
        .collect();
    let offsets: Vec<i64> = candidates.iter().map(|(i, _)| batch[*i].offset).collect();
    let new: Vec<(Uuid,)> = sqlx::query_as(
        "insert into processed_events (processor, event_id, topic, partition, \"offset\")
         select $1, * from unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[])
         on conflict do nothing returning event_id",
    )
    .bind(processor)
    .bind(&ids)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::Database)?;
    let new: HashSet<Uuid> = new.into_iter().map(|(id,)| id).collect();
    Ok(candidates
        .iter()
        .filter(|(_, e)| new.contains(&e.envelope().event_id))
        .copied()
        .collect())
}

async fn unmark(conn: &mut PgConnection, processor: &str, events: &[&Event]) -> Result<()> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.envelope().event_id).collect();
    sqlx::query("delete from processed_events where processor = $1 and event_id = any($2)")
        .bind(processor)
        .bind(&ids)
        .execute(conn)
        .await
        .map_err(Error::Database)?;
    Ok(())
}

/// Next offset per partition: one past the highest offset in the batch.
fn next_offsets(batch: &[Incoming]) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in batch {
        let slot = next.entry((r.topic.clone(), r.partition)).or_insert(0);
        *slot = (*slot).max(r.offset + 1);
    }
    next
}

/// Upserts the group's offsets. They only move forward here, so a member that lost its
/// partitions mid-batch cannot drag the new owner back (that would only re-read, but
/// still); rewinding is the offsets tool's job, and it refuses while members are live.
async fn store_offsets(conn: &mut PgConnection, group: &str, batch: &[Incoming]) -> Result<()> {
    let next = next_offsets(batch);
    let topics: Vec<&str> = next.keys().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = next.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = next.values().copied().collect();
    sqlx::query(
        "insert into consumer_offsets (group_id, topic, partition, next_offset)
         select $1, * from unnest($2::text[], $3::int[], $4::bigint[])
         on conflict (group_id, topic, partition) do update
            set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),
                updated_at = now()",
    )
    .bind(group)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .execute(conn)
    .await
    .map_err(Error::Database)?;
    Ok(())
}

pub use dhanman_schemas::topics::dlq_headers;

struct DeadLetter<'a> {
    record: &'a Incoming,
    logical_topic: &'a str,
    class: &'a str,
    reason: &'a str,
    attempts: u32,
}

async fn dead_letter(
    conn: &mut PgConnection,
    group: &str,
    processor: &str,
    letter: DeadLetter<'_>,
) -> Result<()> {
    use dlq_headers::*;
    let DeadLetter {
        record,
        logical_topic,
        class,
        reason,
        attempts,
    } = letter;
    let mut headers = serde_json::Map::new();
    for (k, v) in &record.headers {
        headers.insert(
            k.clone(),
            Json::String(String::from_utf8_lossy(v).into_owned()),
        );
    }
    let context = json!({
        ERROR: reason,
        ERROR_CLASS: class,
        SOURCE_TOPIC: record.topic,
        SOURCE_PARTITION: record.partition.to_string(),
        SOURCE_OFFSET: record.offset.to_string(),
        PROCESSOR: processor,
        FAILED_AT: Utc::now().to_rfc3339(),
        ATTEMPTS: attempts.to_string(),
    });
    if let Json::Object(context) = context {
        headers.extend(context);
    }
    // The same source record always yields the same dead letter id, so a re-read after a
    // crash cannot dead-letter it twice.
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!(
            "{group}/{}/{}/{}",
            record.topic, record.partition, record.offset
        )
        .as_bytes(),
    );
    let exists: Option<(i64,)> = sqlx::query_as("select id from outbox where event_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::Database)?;
    if exists.is_some() {
        return Ok(());
    }
    dhanman_producers::outbox::enqueue_raw(
        conn,
        dhanman_producers::outbox::RawRecord {
            id,
            topic: &topics::dlq(logical_topic),
            key: record.key.as_deref(),
            value: record.payload.as_deref().unwrap_or_default(),
            headers: Json::Object(headers),
        },
    )
    .await
    .map_err(Error::Database)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: None,
            headers: vec![],
        }
    }

    #[test]
    fn next_offsets_are_one_past_the_highest_per_partition() {
        let batch = [
            record("a", 0, 5),
            record("a", 0, 3),
            record("a", 1, 9),
            record("b", 0, 0),
        ];
        let next = next_offsets(&batch);
        assert_eq!(next[&("a".to_string(), 0)], 6);
        assert_eq!(next[&("a".to_string(), 1)], 10);
        assert_eq!(next[&("b".to_string(), 0)], 1);
    }

    #[test]
    fn only_database_failures_can_be_transient() {
        let down = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert_eq!(ApplyError::from(down).class(), Class::Transient);
        // What a command refuses for its content never succeeds on a retry.
        let refused = dhanman_producers::Error::Conflict("already approved".into());
        assert_eq!(ApplyError::from(refused).class(), Class::Poison);
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        let encode = dhanman_producers::Error::Encode(encode);
        assert_eq!(ApplyError::from(encode).class(), Class::Poison);
        let closed = dhanman_producers::Error::Database(sqlx::Error::PoolClosed);
        assert_eq!(ApplyError::from(closed).class(), Class::Transient);
    }

    #[test]
    fn connection_failures_are_transient_and_constraint_failures_poison() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert_eq!(classify_db(&io), Class::Transient);
        assert_eq!(classify_db(&sqlx::Error::PoolTimedOut), Class::Transient);
        assert_eq!(classify_db(&sqlx::Error::RowNotFound), Class::Poison);
    }
}
