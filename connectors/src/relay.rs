//! The outbox relay: publishes outbox rows in id order with an idempotent producer, then
//! marks them published. Woken by `NOTIFY dhanman_outbox` (a trigger on insert) and, as a
//! safety net, by a timer.
//!
//! One relay publishes at a time (a Postgres advisory lock), so records of one key leave
//! in the order their transactions wrote them; more relays are hot standbys. A crash
//! between publishing and marking republishes a few records: consumers deduplicate by
//! event id, so that is harmless.
//!
//! A row that can never be published as it is (its payload does not encode under its
//! schema, the broker refuses the record itself) is parked with its reason instead of
//! failing the batch forever: the rows behind it go out, and `dhanman outbox parked` and
//! the `dhanman_outbox_parked` gauge show it until it is fixed and unparked.

use std::sync::Arc;
use std::time::Duration;

use dhanman_schemas::Codec;
use dhanman_schemas::events::record_headers;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::Result;
use crate::derived::{self, Derived};
use crate::leader::{self, Leadership};
use crate::retry::Backoff;

/// Counter, label `topic` (physical name): records published and acknowledged.
pub const PUBLISHED: &str = "dhanman_events_published_total";

/// The W3C trace context header outbox rows carry (see `dhanman_plumbing::trace`).
const TRACEPARENT: &str = "traceparent";

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
    key: Option<String>,
    value: Vec<u8>,
    headers: OwnedHeaders,
    correlation_id: Option<String>,
}

fn kafka_headers(headers: &Json) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(map) = headers.as_object() {
        for (k, v) in map {
            let value = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            out = out.insert(Header {
                key: k,
                value: Some(value.as_bytes()),
            });
        }
    }
    out
}

impl Relay {
    pub fn new(pool: PgPool, producer: FutureProducer, codec: Arc<Codec>) -> Self {
        Relay {
            pool,
            producer,
            codec,
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            topic_prefix: String::new(),
        }
    }

    /// Publishes outbox topic `t` as `<prefix>t` (outbox rows hold logical names).
    pub fn with_topic_prefix(mut self, prefix: &str) -> Self {
        self.topic_prefix = prefix.to_string();
        self
    }

    /// Runs until the task is dropped. Errors (database or broker down) are logged and
    /// retried with backoff; nothing is marked published that was not acknowledged.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await
    }

    /// [`Relay::run`] until `stop` resolves: the batch being published is acknowledged and
    /// marked first, and the lock is released, so a standby relay takes over at once.
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
            leadership = Leadership::acquire(&self.pool, leader::RELAY_LOCK, self.poll_interval) => leadership?,
            () = stop.as_mut() => return Ok(()),
        };
        tracing::info!("outbox relay is the active publisher");
        let result = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen("dhanman_outbox").await?;
            loop {
                let published = self.publish_batch().await?;
                // Between batches only: a batch is published and marked whole.
                tokio::select! {
                    biased;
                    () = stop.as_mut() => return Ok(()),
                    () = std::future::ready(()) => {}
                }
                if published < self.batch_size as usize {
                    // Keep the lock connection alive and detect its loss while idle.
                    leadership.check().await?;
                    tokio::select! {
                        _ = tokio::time::timeout(self.poll_interval, listener.recv()) => {}
                        () = stop.as_mut() => return Ok(()),
                    }
                }
            }
        }
        .await;
        leadership.release().await;
        result
    }

    /// Publishes up to one batch; returns how many rows it published.
    pub async fn publish_batch(&self) -> Result<usize> {
        let rows = sqlx::query(
            "select id, event_id, topic, message_key, record_name, schema_version, payload, raw_value,
                    derived_from, headers
               from outbox where published_at is null and parked_at is null order by id limit $1",
        )
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut derived_rows = Vec::new();
        for row in &rows {
            if let Some(source) = row.try_get::<Option<Uuid>, _>("derived_from")? {
                derived_rows.push(Derived {
                    event_id: row.try_get("event_id")?,
                    record_name: row.try_get("record_name")?,
                    source,
                });
            }
        }
        let mut derived = derived::build(&self.pool, &derived_rows).await?;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.record(row, &mut derived).await {
                Ok(record) => pending.push(record),
                Err(e) if e.is_unpublishable() => {
                    self.park(row.try_get("id")?, &e.to_string()).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.publish(pending).await
    }

    /// The record an outbox row becomes: its stored bytes (dead letters, redrives) or its
    /// payload encoded under its schema (derived rows built from what they announce).
    async fn record(
        &self,
        row: &sqlx::postgres::PgRow,
        derived: &mut std::collections::HashMap<Uuid, Json>,
    ) -> Result<Pending> {
        let event_id: Uuid = row.try_get("event_id")?;
        let mut headers: Json = row.try_get("headers")?;
        let raw: Option<Vec<u8>> = row.try_get("raw_value")?;
        let value = match raw {
            Some(bytes) => bytes,
            None => {
                let name: String = row.try_get("record_name")?;
                let version: i32 = row.try_get("schema_version")?;
                let payload: Json = match derived.remove(&event_id) {
                    Some(built) => {
                        let correlation_id = built
                            .get("correlation_id")
                            .and_then(Json::as_str)
                            .unwrap_or_default();
                        let traceparent = headers.get(TRACEPARENT).cloned();
                        headers = record_headers(&name, event_id, correlation_id);
                        if let (Some(tp), Some(map)) = (traceparent, headers.as_object_mut()) {
                            map.insert(TRACEPARENT.to_string(), tp);
                        }
                        built
                    }
                    None => row.try_get("payload")?,
                };
                self.codec
                    .encode_json(&name, version as u32, &payload)
                    .await?
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
            key: row.try_get("message_key")?,
            value,
            correlation_id: headers
                .get("correlation_id")
                .and_then(Json::as_str)
                .map(str::to_string),
            headers: kafka_headers(&headers),
        })
    }

    /// Sends the records, then marks those the broker acknowledged; one the broker refuses
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
                    self.mark(&ids).await?;
                    return Err(e.into());
                }
                Err(_canceled) => {
                    self.mark(&ids).await?;
                    return Err(rdkafka::error::KafkaError::Canceled.into());
                }
            }
        }
        self.mark(&ids).await?;
        Ok(ids.len())
    }

    /// Sets a row aside with the reason it cannot be published.
    async fn park(&self, id: i64, reason: &str) -> Result<()> {
        tracing::error!(
            outbox_id = id,
            %reason,
            "outbox row parked: it cannot be published as it is; see `dhanman outbox parked`"
        );
        sqlx::query("update outbox set parked_at = now(), parked_reason = $2 where id = $1")
            .bind(id)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("update outbox set published_at = now() where id = any($1)")
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
