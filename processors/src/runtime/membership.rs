//! A member's life in its consumer group: joining, the consume loop (the next batch read
//! and decoded while this one's transaction runs), stopping between batches, and leaving
//! the group so its partitions move on at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::batch::{Gathered, next_offsets, split};
use super::consumer::{StoredOffsets, ToKafka};
use super::{AbortOnDrop, Processor, Runtime, metric};
use crate::stop::Stop;
use crate::{Error, Result};

/// The consumers' session timeout: how long after its last heartbeat the group coordinator
/// counts a member as gone (SIGKILL, a crash, a lost network) and hands its partitions on.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping member waits for the broker to confirm it left its group.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl<P: Processor> Runtime<P> {
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
    pub(super) async fn leave(&self, consumer: Arc<StreamConsumer<StoredOffsets>>) {
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
    pub(super) async fn consume(
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
        let mut to_kafka = ToKafka::default();
        loop {
            if stop.is_requested() {
                self.commit_to_kafka(&consumer, to_kafka.take(Instant::now()));
                return Ok(());
            }
            let Gathered { batch, decoded } = gathered;
            if batch.is_empty() {
                // Nothing to read: Kafka's copy catches up with what was applied.
                self.commit_to_kafka(&consumer, to_kafka.take(Instant::now()));
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
                let mut lanes = split(batch, decoded, self.config.lanes);
                // One lane stores the offsets in its transaction; lanes store them together
                // once all have committed.
                let split = lanes.len() > 1;
                if split {
                    let sizes: Vec<usize> =
                        lanes.iter().map(|(records, _)| records.len()).collect();
                    tracing::debug!(lanes = sizes.len(), ?sizes, "batch split into lanes");
                }
                let reports =
                    futures_util::future::join_all(lanes.iter_mut().map(|(records, decoded)| {
                        self.process_with_retry(records, decoded.take(), !split)
                    }))
                    .await;
                if split {
                    self.store_split_offsets(&offsets).await;
                }
                tracing::debug!(?reports, "batch committed");
                to_kafka.add(offsets);
                if let Some(due) = to_kafka.due(Instant::now()) {
                    self.commit_to_kafka(&consumer, due);
                }
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
}
