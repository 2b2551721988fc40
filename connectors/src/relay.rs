//! The outbox relay: publishes outbox rows in id order with an idempotent producer, then
//! takes them out of the queue of rows waiting (`outbox_pending`, which a trigger fills as
//! rows are written; the rows themselves are never rewritten). It publishes batch after
//! batch while rows wait, and looks again every [`POLL_INTERVAL`] while the outbox is
//! empty. (It polls rather than being woken by a `NOTIFY` from each writer: a notifying
//! transaction holds a cluster-wide lock through its commit, which would make every
//! command's commit wait for the one before it.)
//!
//! One relay publishes at a time (a Postgres advisory lock), so records of one key leave
//! in the order their transactions wrote them; more relays are hot standbys. A crash
//! between publishing and dequeuing republishes a few records: consumers deduplicate by
//! event id, so that is harmless.
//!
//! A row that can never be published as it is (its payload does not encode under its
//! schema, the broker refuses the record itself) is parked with its reason instead of
//! failing the batch forever: the rows behind it go out, and `dhanman outbox parked` and
//! the `dhanman_outbox_parked` gauge show it until it is fixed and unparked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dhanman_schemas::Codec;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;
use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::leader::{self, Leadership};
use crate::retry::Backoff;
use crate::{Error, Result};

/// Counter, label `topic` (physical name): records published and acknowledged.
pub const PUBLISHED: &str = "dhanman_events_published_total";

/// How often an idle relay looks for new rows: the most it adds to an event's way to Kafka.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How often an idle relay checks that it still holds the lock (and retries taking it while
/// it is a standby).
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// After an interruption (database or broker down): from 200 ms, doubling, at most 10 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    codec: Arc<Codec>,
    batch_size: i64,
    poll_interval: Duration,
    topic_prefix: String,
}

struct Pending {
    id: i64,
    event_id: Uuid,
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: OwnedHeaders,
    correlation_id: Option<String>,
}

/// A row's headers as the record carries them ([`dhanman_plumbing::outbox::published_headers`]).
fn kafka_headers(headers: &Json, ids: Option<(Uuid, &str)>) -> OwnedHeaders {
    dhanman_plumbing::outbox::published_headers(headers, ids)
        .into_iter()
        .fold(OwnedHeaders::new(), |out, (key, value)| {
            out.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        })
}

impl Relay {
    pub fn new(pool: PgPool, producer: FutureProducer, codec: Arc<Codec>) -> Self {
        Relay {
            pool,
            producer,
            codec,
            batch_size: 1000,
            poll_interval: POLL_INTERVAL,
            topic_prefix: String::new(),
        }
    }

    /// Publishes outbox topic `t` as `<prefix>t` (outbox rows hold logical names).
    pub fn with_topic_prefix(mut self, prefix: &str) -> Self {
        self.topic_prefix = prefix.to_string();
        self
    }

    /// Runs until the task is dropped. Errors (database or broker down) are logged and
    /// retried with backoff; no row leaves the queue that was not acknowledged.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await
    }

    /// [`Relay::run`] until `stop` resolves: the batch being published is acknowledged and
    /// dequeued first, and the lock is released, so a standby relay takes over at once.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut delays = RETRY.delays();
        loop {
            match self.lead(stop.as_mut()).await {
                Ok(()) => return,
                Err(e) => {
                    let pause = delays.next_delay();
                    tracing::warn!(error = %e, retry_in = ?pause, "outbox relay interrupted");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.as_mut() => return,
                    }
                }
            }
        }
    }

    /// Waits to become the leader, then publishes until an error, or until `stop` (then
    /// `Ok`).
    async fn lead(&self, mut stop: std::pin::Pin<&mut impl Future<Output = ()>>) -> Result<()> {
        let mut leadership = tokio::select! {
            leadership = Leadership::acquire(&self.pool, leader::RELAY_LOCK, LOCK_CHECK_INTERVAL) => leadership?,
            () = stop.as_mut() => return Ok(()),
        };
        tracing::info!("outbox relay is the active publisher");
        let result = async {
            let mut checked = Instant::now();
            loop {
                let published = self.publish_batch().await?;
                // Between batches only: a batch is published and dequeued whole.
                tokio::select! {
                    biased;
                    () = stop.as_mut() => return Ok(()),
                    () = std::future::ready(()) => {}
                }
                // Keep the lock connection alive and detect its loss, busy or idle.
                if checked.elapsed() >= LOCK_CHECK_INTERVAL {
                    leadership.check().await?;
                    checked = Instant::now();
                }
                if published < self.batch_size as usize {
                    tokio::select! {
                        () = tokio::time::sleep(self.poll_interval) => {}
                        () = stop.as_mut() => return Ok(()),
                    }
                }
            }
        }
        .await;
        leadership.release().await;
        result
    }

    /// Publishes up to one batch; returns how many rows it published. (The queue's ids are
    /// taken first as an array and joined by the outbox's key: a plain join would let the
    /// planner scan the whole outbox.) An id whose row is gone (deleted by hand) is taken
    /// out of the queue with a warning rather than read again forever.
    pub async fn publish_batch(&self) -> Result<usize> {
        let rows = sqlx::query(
            "select q.id, o.event_id, o.topic, o.message_key, o.raw_key, o.record_name,
                    o.schema_version, o.payload, o.avro, o.raw_value, o.headers
               from unnest(array(select id from outbox_pending order by id limit $1)) q (id)
               left join outbox o on o.id = q.id
              order by q.id",
        )
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        let mut rowless = Vec::new();
        for row in &rows {
            if row.try_get::<Option<Uuid>, _>("event_id")?.is_none() {
                rowless.push(row.try_get::<i64, _>("id")?);
                continue;
            }
            match self.record(row).await {
                Ok(record) => pending.push(record),
                Err(e) if e.is_unpublishable() => {
                    self.park(row.try_get("id")?, &e.to_string()).await?;
                }
                Err(e) => return Err(e),
            }
        }
        if !rowless.is_empty() {
            tracing::warn!(
                outbox_ids = ?rowless,
                "queued outbox ids whose rows are gone: taken out of the queue"
            );
            self.dequeue(&rowless).await?;
        }
        self.publish(pending).await
    }

    /// The record an outbox row becomes: its stored bytes (dead letters, redrives), its
    /// Avro datum framed, or its payload encoded under its schema.
    async fn record(&self, row: &sqlx::postgres::PgRow) -> Result<Pending> {
        let event_id: Uuid = row.try_get("event_id")?;
        let headers: Json = row.try_get("headers")?;
        let raw: Option<Vec<u8>> = row.try_get("raw_value")?;
        let name: Option<String> = row.try_get("record_name")?;
        let (value, ids) = match (raw, name) {
            (Some(bytes), _) => (bytes, None),
            (None, None) => {
                return Err(Error::Outbox(format!("row {event_id} names no record")));
            }
            (None, Some(name)) => {
                let version = row.try_get::<i32, _>("schema_version")? as u32;
                let avro: Option<Vec<u8>> = row.try_get("avro")?;
                let value = match avro {
                    // Kept as its datum: framed as it is.
                    Some(datum) => self.codec.frame(&name, version, &datum).await?,
                    // Only a row written before its writer stored records (an entry's
                    // announcement of that time, published then) lacks both forms.
                    None => {
                        let payload: Json =
                            row.try_get::<Option<Json>, _>("payload")?.ok_or_else(|| {
                                Error::Outbox(format!("row {event_id} has no record"))
                            })?;
                        self.codec.encode_json(&name, version, &payload).await?
                    }
                };
                (value, Some((event_id, name)))
            }
        };
        Ok(Pending {
            id: row.try_get("id")?,
            event_id,
            topic: format!(
                "{}{}",
                self.topic_prefix,
                row.try_get::<String, _>("topic")?
            ),
            // A dead letter's key as it was read, when its text would not give it back.
            key: match row.try_get::<Option<Vec<u8>>, _>("raw_key")? {
                Some(bytes) => Some(bytes),
                None => row
                    .try_get::<Option<String>, _>("message_key")?
                    .map(String::into_bytes),
            },
            value,
            correlation_id: headers
                .get("correlation_id")
                .and_then(Json::as_str)
                .map(str::to_string),
            headers: kafka_headers(&headers, ids.as_ref().map(|(id, n)| (*id, n.as_str()))),
        })
    }

    /// Sends the records, then dequeues those the broker acknowledged; one the broker refuses
    /// for itself is parked, any other failure stops the batch (it is retried).
    async fn publish(&self, pending: Vec<Pending>) -> Result<usize> {
        // Enqueue all, then await in order: the producer pipelines them, and idempotence
        // keeps per-partition order across its internal retries.
        let mut deliveries = Vec::with_capacity(pending.len());
        for p in &pending {
            let mut record = FutureRecord::to(&p.topic)
                .payload(&p.value)
                .headers(p.headers.clone());
            if let Some(key) = &p.key {
                record = record.key(key);
            }
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break Some(delivery),
                    Err((e, returned)) if is_queue_full(&e) => {
                        // Local queue full: let it drain, then retry the same record.
                        tracing::debug!(error = %e, "producer queue full");
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // Refused before it left (larger than the producer may send).
                    Err((e, _)) if refuses_the_record(&e) => {
                        self.park(p.id, &format!("the producer refused the record: {e}"))
                            .await?;
                        break None;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            };
            deliveries.push(delivery);
        }
        let mut ids = Vec::with_capacity(pending.len());
        for (p, delivery) in pending
            .iter()
            .zip(deliveries)
            .filter_map(|(p, d)| Some((p, d?)))
        {
            let span = tracing::info_span!(
                "publish",
                topic = %p.topic,
                event_id = %p.event_id,
                correlation_id = p.correlation_id.as_deref().unwrap_or("")
            );
            match delivery.instrument(span.clone()).await {
                Ok(Ok(delivery)) => {
                    span.in_scope(|| {
                        tracing::debug!(
                            partition = delivery.partition,
                            offset = delivery.offset,
                            "published"
                        )
                    });
                    metrics::counter!(PUBLISHED, "topic" => p.topic.clone()).increment(1);
                    ids.push(p.id);
                }
                Ok(Err((e, _))) if refuses_the_record(&e) => {
                    self.park(p.id, &format!("the broker refused the record: {e}"))
                        .await?;
                }
                Ok(Err((e, _))) => {
                    self.dequeue(&ids).await?;
                    return Err(e.into());
                }
                Err(_canceled) => {
                    self.dequeue(&ids).await?;
                    return Err(rdkafka::error::KafkaError::Canceled.into());
                }
            }
        }
        self.dequeue(&ids).await?;
        Ok(ids.len())
    }

    /// Sets a row aside with the reason it cannot be published.
    async fn park(&self, id: i64, reason: &str) -> Result<()> {
        tracing::error!(
            outbox_id = id,
            %reason,
            "outbox row parked: it cannot be published as it is; see `dhanman outbox parked`"
        );
        sqlx::query(
            "with dequeued as (delete from outbox_pending where id = $1)
             update outbox set parked_at = now(), parked_reason = $2 where id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dequeue(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("delete from outbox_pending where id = any($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
}

/// Whether the broker refused a record for what it is (too large, malformed), which no
/// retry changes, rather than for the broker's state.
fn refuses_the_record(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessage
                | Code::InvalidMessageSize
                | Code::InvalidRecord
                | Code::BadMessage
        )
    )
}
