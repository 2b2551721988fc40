//! The consumer runtime, written once for every processor.
//!
//! For each batch it opens one Postgres transaction holding: the processor's effects
//! (applied only for events it has never applied: a `processed_events` row is the gate,
//! or, for the events whose effects gate them, those effects), any
//! outbox rows (emitted events, dead letters) and the group's next offsets; a large batch is
//! split by key into lanes, transactions committed concurrently, and its offsets are stored
//! once every lane has committed. On assignment it seeks to the stored offsets. After the
//! commit it commits the same offsets to Kafka, only so that lag tools see progress.
//!
//! Failures are classified in one place ([`classify_db`], after
//! [`dhanman_plumbing::postgres::is_transient`]; [`dhanman_schemas::Error::is_transient`]):
//! transient ones (database or registry down, or a statement the schema cannot run:
//! [`is_defect`]) retry the whole batch with backoff and never advance; poison records (undecodable, invalid, refused by a constraint) go to
//! `<topic>.dlq` through the outbox with headers naming the error and their origin, and
//! the partition keeps flowing.
//!
//! One file per concern:
//! - [`processor`]: the record a processor is handed and the trait it implements;
//! - `consumer`: the Kafka consumer, the rebalance callback that seeks to Postgres' offsets,
//!   gathering a batch from the assigned partitions;
//! - `membership`: a member's life in its group: the consume loop, stopping, leaving;
//! - `batch`: decoding a batch ahead of its transaction and splitting it into lanes;
//! - `transaction`: one batch, one transaction: the exactly-once gate, the effects, the
//!   stored offsets;
//! - `retry`: transient or poison, and how a batch is retried;
//! - `dead_letter`: a poison record's dead letter, through the outbox;
//! - `survey`: what a replay of a range would apply, without applying it;
//! - [`metric`]: the runtime's Prometheus metrics.

mod batch;
mod consumer;
mod dead_letter;
mod membership;
pub mod metric;
pub mod processor;
mod retry;
mod survey;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use dhanman_schemas::Codec;
use sqlx::PgPool;

pub use batch::BatchReport;
pub use dead_letter::dlq_headers;
pub use membership::{LEAVE_TIMEOUT, MEMBER_TIMEOUT};
pub use processor::{Applied, BoxedProcessor, Incoming, Processor};
pub use retry::{ApplyError, Class, classify_db, is_defect};
pub use survey::{Survey, TypeCounts};

/// Records per transaction unless configured: large enough that per-transaction costs
/// (round trips, commit, the balance rows every batch updates) stay small per event, small
/// enough that a batch commits in a few hundred milliseconds (`BENCHMARKS.md`).
pub const DEFAULT_MAX_BATCH: usize = 2000;

/// Concurrent transactions a batch is split into (by key) unless configured. Four: one
/// transaction keeps one Postgres backend busy and leaves the second core mostly idle; on 2
/// cores the ledger over a backlog went from 29-32 k to 45-49 k events/s with four lanes (two:
/// 47 k, eight: 43-46 k; BENCHMARKS.md). A batch is split only when each lane gets at least
/// a few hundred records, so below full load batches stay whole.
pub const DEFAULT_LANES: usize = 4;

/// How long a batch waits for more records once it has its first: 5 ms, within which the
/// records of one relay batch arrive; 20 ms added its whole wait to every event's way to the
/// ledger below full load (BENCHMARKS.md).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub bootstrap_servers: String,
    /// Consumer group; defaults to `<topic prefix>dhanman.<processor name>`.
    pub group_id: Option<String>,
    pub max_batch: usize,
    /// Concurrent transactions per batch, by partition (see [`Runtime::run`]).
    pub lanes: usize,
    /// How long to wait for more records once a batch has its first one ([`DEFAULT_LINGER`],
    /// unless the processor's entry in [`crate::catalog`] says otherwise).
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
            linger: DEFAULT_LINGER,
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

/// A processor plugged into the runtime: its consumer, batches, transactions, retries and
/// dead letters.
pub struct Runtime<P> {
    processor: Arc<P>,
    pool: PgPool,
    codec: Arc<Codec>,
    config: RuntimeConfig,
    /// Off for a replay: its batches must not move the live group's offsets.
    store_group_offsets: bool,
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
}

/// A task stopped when its handle is dropped, so a part's helpers end with it.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
