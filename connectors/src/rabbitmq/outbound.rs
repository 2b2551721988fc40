//! The pipeline → RabbitMQ, for the .NET consumers of services that moved. The bridge
//! reads the event topics as a consumer group, maps each of the organization's events to
//! its C# form ([`super::mapping::outbound`]) and publishes it to the events exchange with
//! the event id as `message_id` (stable across republishing), persistent, with publisher
//! confirms. Once RabbitMQ confirmed a batch, its event ids go to `rabbitmq_outbound` and
//! only then are the Kafka offsets committed.
//!
//! So each outbox event is published once as far as the outbox is concerned: an event
//! read again (the relay's rare duplicate, a rewound group) finds its row and is skipped.
//! On the wire it is at least once: a crash between the confirm and the row republishes
//! it, with the same `message_id`, for the consumer to drop.
//!
//! Skipped: events that came from RabbitMQ (the Kafka header `origin: rabbitmq`: the
//! .NET service that published them has them), other organizations' events, and records
//! the .NET side has no type for.

use std::collections::BTreeMap;
use std::sync::Arc;

use dhanman_schemas::{Codec, topics};
use futures_util::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Error, FROM_RABBITMQ, KAFKA_ORIGIN_HEADER, ORIGIN, ORIGIN_HEADER, OUTBOUND, OUTBOUND_SKIPPED,
    Settings, StopSignal,
};

/// The topics whose events the .NET services read.
pub const TOPICS: &[&str] = &[
    topics::INVOICES,
    topics::PAYMENTS,
    topics::PURCHASE_ORDERS,
    topics::BILLS,
    topics::SALARIES,
    topics::USERS,
];

/// Runs the outbound side until `stop`, reconnecting after failures (what was not
/// confirmed and recorded is read again from the committed offsets).
pub async fn run(pool: PgPool, codec: Arc<Codec>, settings: Settings, stop: StopSignal) {
    let (pool, codec, settings) = (&pool, &codec, &settings);
    super::supervise("outbound", stop, |stop, _| {
        session(pool, codec, settings, stop)
    })
    .await
}

fn consumer(settings: &Settings) -> Result<StreamConsumer, Error> {
    let consumer: StreamConsumer =
        dhanman_plumbing::kafka::client_config(&settings.kafka_bootstrap)
            .set("group.id", &settings.group_id)
            .set(
                "client.id",
                dhanman_plumbing::kafka::client_id("rabbitmq-bridge"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
    let topics: Vec<String> = TOPICS
        .iter()
        .map(|t| format!("{}{t}", settings.topic_prefix))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    Ok(consumer)
}

async fn session(
    pool: &PgPool,
    codec: &Codec,
    settings: &Settings,
    mut stop: StopSignal,
) -> Result<(), Error> {
    let connection = super::connect(&settings.url, "outbound").await?;
    let channel = connection.create_channel().await?;
    super::declare(&channel, settings).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = consumer(settings)?;
    metrics::gauge!(super::CONNECTED, "side" => "outbound").set(1.0);
    tracing::info!(exchange = %settings.events_exchange, group = %settings.group_id, "RabbitMQ bridge publishing our events");
    let mut checks = super::connection_checks();
    loop {
        let first = tokio::select! {
            message = consumer.recv() => message?.detach(),
            () = stop.wait() => return Ok(()),
            _ = checks.tick() => {
                super::still_connected(&connection)?;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < settings.batch_size {
            match consumer.recv().now_or_never() {
                Some(message) => batch.push(message?.detach()),
                None => break,
            }
        }
        publish_batch(pool, codec, settings, &channel, &batch).await?;
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            let entry = next
                .entry((m.topic().to_string(), m.partition()))
                .or_default();
            *entry = (*entry).max(m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&offsets, CommitMode::Sync)?;
    }
}

/// `text` as an AMQP short string: at most 255 bytes, cut on a character boundary (a Kafka
/// record's correlation id has no limit; lapin panics on a longer one).
fn short_string(text: &str) -> ShortString {
    let end = text.floor_char_boundary(255);
    if end < text.len() {
        tracing::warn!(
            bytes = text.len(),
            "correlation id cut to the 255 bytes an AMQP property holds"
        );
    }
    ShortString::from(&text[..end])
}

/// One record ready to publish.
struct Ready {
    event_id: Uuid,
    type_name: &'static str,
    body: String,
    correlation_id: String,
    occurred_at: u64,
}

fn origin(message: &OwnedMessage) -> Option<String> {
    let (headers, _) = dhanman_plumbing::kafka::headers_of(message);
    headers
        .into_iter()
        .find(|(k, _)| k == KAFKA_ORIGIN_HEADER)
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
}

async fn publish_batch(
    pool: &PgPool,
    codec: &Codec,
    settings: &Settings,
    channel: &lapin::Channel,
    batch: &[OwnedMessage],
) -> Result<(), Error> {
    let mut ready = Vec::with_capacity(batch.len());
    for message in batch {
        if origin(message).as_deref() == Some(FROM_RABBITMQ) {
            metrics::counter!(OUTBOUND_SKIPPED, "reason" => "echo").increment(1);
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        let event = match codec.decode_event(payload).await {
            Ok(event) => event,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                // Poison for every consumer: the processors dead-letter it; here it is
                // only not published.
                tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), error = %e, "record not published: it does not decode");
                metrics::counter!(OUTBOUND_SKIPPED, "reason" => "undecodable").increment(1);
                continue;
            }
        };
        let envelope = event.envelope();
        if envelope.organization_id != settings.organization_id {
            continue;
        }
        let Some(out) = super::mapping::outbound(&event) else {
            metrics::counter!(OUTBOUND_SKIPPED, "reason" => "unmapped").increment(1);
            continue;
        };
        ready.push(Ready {
            event_id: envelope.event_id,
            type_name: out.type_name,
            body: out.body,
            correlation_id: envelope.correlation_id.clone(),
            occurred_at: envelope.occurred_at.timestamp().max(0) as u64,
        });
    }
    if ready.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ready.iter().map(|r| r.event_id).collect();
    let done: Vec<(Uuid,)> =
        sqlx::query_as("select event_id from rabbitmq_outbound where event_id = any($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let done: std::collections::HashSet<Uuid> = done.into_iter().map(|(id,)| id).collect();
    let mut confirms = Vec::with_capacity(ready.len());
    let mut sent = Vec::with_capacity(ready.len());
    for r in &ready {
        if done.contains(&r.event_id) || sent.iter().any(|s: &&Ready| s.event_id == r.event_id) {
            metrics::counter!(OUTBOUND_SKIPPED, "reason" => "already_published").increment(1);
            continue;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(ORIGIN_HEADER),
            AMQPValue::LongString(LongString::from(ORIGIN.as_bytes().to_vec())),
        );
        let properties = BasicProperties::default()
            .with_type(r.type_name.into())
            .with_message_id(r.event_id.to_string().into())
            .with_correlation_id(short_string(&r.correlation_id))
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(r.occurred_at)
            .with_app_id(ORIGIN.into())
            .with_headers(headers);
        let publish = channel.basic_publish(
            settings.events_exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            r.body.as_bytes(),
            properties,
        );
        let confirm = super::answered("a publish", publish).await?;
        confirms.push(confirm);
        sent.push(r);
    }
    // Pipelined: every publish is out before the first confirm is awaited.
    for (confirm, r) in confirms.into_iter().zip(&sent) {
        match super::answered("a publish's confirm", confirm).await? {
            Confirmation::Ack(_) => {
                metrics::counter!(OUTBOUND, "type" => r.type_name).increment(1);
            }
            other => {
                return Err(Error::Unconfirmed(format!(
                    "event {}: {other:?}",
                    r.event_id
                )));
            }
        }
    }
    let ids: Vec<Uuid> = sent.iter().map(|r| r.event_id).collect();
    let types: Vec<&str> = sent.iter().map(|r| r.type_name).collect();
    sqlx::query(
        "insert into rabbitmq_outbound (event_id, message_type)
         select * from unnest($1::uuid[], $2::text[]) on conflict do nothing",
    )
    .bind(&ids)
    .bind(&types)
    .execute(pool)
    .await?;
    tracing::debug!(published = sent.len(), "events published to RabbitMQ");
    Ok(())
}
