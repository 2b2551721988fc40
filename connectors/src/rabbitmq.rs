//! The RabbitMQ bridge, for a society whose .NET services move to this pipeline one at a
//! time: the services not yet moved keep publishing to RabbitMQ and keep reading from it.
//!
//! - [`inbound`]: their events (fan-out exchange `dhanman.events`) and commands (direct
//!   exchange `dhanman.commands`, key `notification.commands`) are read from durable queues
//!   of the bridge's own, mapped ([`mapping`]) to the command the API runs for the same
//!   thing, and applied through the outbox with the message id recorded in the same
//!   transaction; a message is acknowledged only after that commits.
//! - [`outbound`]: our events, read from Kafka as a consumer group, are published to
//!   `dhanman.events` as the JSON the .NET consumers read, with publisher confirms and the
//!   event id as `message_id`.
//!
//! Echo guard: what the bridge publishes carries the header [`ORIGIN_HEADER`] and its own
//! inbound skips it; what it applied from RabbitMQ carries the Kafka header
//! [`KAFKA_ORIGIN_HEADER`] and its outbound skips it. No message goes round.

pub mod inbound;
pub mod mapping;
pub mod outbound;

use std::time::Duration;

use dhanman_producers::purchase::ApprovalPolicy;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use uuid::Uuid;

/// AMQP header on what the bridge publishes: who published it.
pub const ORIGIN_HEADER: &str = "x-dhanman-origin";
/// The value of [`ORIGIN_HEADER`]: this pipeline.
pub const ORIGIN: &str = "dhanman-stream";
/// Header of outbox rows (so of Kafka records) the bridge wrote for a RabbitMQ message.
pub const KAFKA_ORIGIN_HEADER: &str = "origin";
/// The value of [`KAFKA_ORIGIN_HEADER`] on those.
pub const FROM_RABBITMQ: &str = "rabbitmq";
/// Kafka header naming the AMQP message an outbox row came from.
pub const MESSAGE_ID_HEADER: &str = "amqp_message_id";
/// The processor name of dead letters the bridge writes (`dlq.processor`).
pub const PROCESSOR: &str = "rabbitmq-bridge";

/// Counter, label `outcome` (`applied`, `duplicate`, `echo`, `dead_lettered`): messages
/// the inbound side acknowledged.
pub const INBOUND: &str = "dhanman_rabbitmq_inbound_total";
/// Counter, label `class` (`unknown-type`, `malformed`, `too-large`, `rejected`):
/// messages sent to the dead-letter exchange.
pub const DEAD_LETTERS: &str = "dhanman_rabbitmq_dead_letters_total";
/// Counter, label `type` (the C# class name): events published and confirmed.
pub const OUTBOUND: &str = "dhanman_rabbitmq_outbound_published_total";
/// Counter, label `reason` (`echo`, `unmapped`, `already_published`, `undecodable`):
/// Kafka records the outbound side did not publish.
pub const OUTBOUND_SKIPPED: &str = "dhanman_rabbitmq_outbound_skipped_total";
/// Gauge, label `side` (`inbound`, `outbound`): 1 while connected to RabbitMQ.
pub const CONNECTED: &str = "dhanman_rabbitmq_connected";
/// Counter: inbound sessions ended by a delivery the AMQP client could not read.
pub const UNREADABLE: &str = "dhanman_rabbitmq_unreadable_deliveries_total";

/// Deliveries RabbitMQ makes of one message to the bridge's queues before it moves the
/// message to the dead-letter exchange itself (`x-delivery-limit` of the quorum queues).
/// What bounds a message that cannot be read at all: the AMQP client drops the connection
/// on it before the bridge sees it, so only the server can count its returns.
pub const DELIVERY_LIMIT: i32 = 20;

/// A stop request any number of tasks can wait for.
#[derive(Debug, Clone)]
pub struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// Requested when `stop` resolves.
    pub fn new(stop: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(true);
        });
        StopSignal(rx)
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&mut self) {
        if self.0.wait_for(|s| *s).await.is_err() {
            // The sender is gone only once its task ended: the stop was requested.
        }
    }
}

/// Where the bridge connects and what it declares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    /// The society the .NET services belong to: every message is applied in it, and only
    /// its events are published.
    pub organization_id: Uuid,
    pub events_exchange: String,
    pub commands_exchange: String,
    pub commands_routing_key: String,
    /// The bridge's queues are `<prefix>.events` and `<prefix>.commands`.
    pub queue_prefix: String,
    /// Fan-out exchange of dead letters, with the durable queue `<prefix>.dead-letters`.
    pub dead_letter_exchange: String,
    /// Unacknowledged messages RabbitMQ hands the bridge at once.
    pub prefetch: u16,
    /// Most messages applied in one transaction.
    pub batch_size: usize,
    pub policy: ApprovalPolicy,
    pub kafka_bootstrap: String,
    pub topic_prefix: String,
    /// Consumer group of the outbound side.
    pub group_id: String,
}

impl Settings {
    pub fn events_queue(&self) -> String {
        format!("{}.events", self.queue_prefix)
    }

    pub fn commands_queue(&self) -> String {
        format!("{}.commands", self.queue_prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.queue_prefix)
    }
}

/// Failures of a bridge session; each ends the session, which reconnects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm a publish: {0}")]
    Unconfirmed(String),
    #[error("RabbitMQ connection lost: {0}")]
    Lost(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Codec(#[from] dhanman_schemas::Error),
}

impl Error {
    /// What RabbitMQ sent could not be read (a short string that is not UTF-8, say): the
    /// client has dropped the connection, and the message that did it comes back first.
    pub fn unreadable(&self) -> bool {
        matches!(self, Error::Amqp(e) if matches!(e.kind(), lapin::ErrorKind::ParsingError(_)))
    }
}

/// The longest one exchange with RabbitMQ may take (connecting, a publish and its confirm,
/// an acknowledgement) before the session ends and reconnects: a server that closes the
/// connection cleanly can leave an operation in flight unanswered rather than failed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often a session waiting for work checks that its connection is still up.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `op`, or [`Error::Lost`] naming `what` when RabbitMQ has not answered within
/// [`ANSWER_WITHIN`].
pub(crate) async fn answered<T, E: Into<Error>>(
    what: &str,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(ANSWER_WITHIN, op).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Lost(format!(
            "no answer to {what} within {ANSWER_WITHIN:?}"
        ))),
    }
}

/// Ticks every [`CHECK_EVERY`] for [`still_connected`], from one interval after now.
pub(crate) fn connection_checks() -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY)
}

/// [`Error::Lost`] once the connection is down, for a session whose consumer stream would
/// not end by itself.
pub(crate) fn still_connected(connection: &Connection) -> Result<(), Error> {
    if connection.status().connected() {
        Ok(())
    } else {
        Err(Error::Lost("the connection is closed".into()))
    }
}

/// Connects, naming the connection so RabbitMQ's tools show who it is; bounded by
/// [`ANSWER_WITHIN`].
pub async fn connect(url: &str, side: &str) -> Result<Connection, Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("dhanman-bridge-{side}").into());
    answered("connecting", Connection::connect(url, properties)).await
}

/// Declares (idempotently) the exchanges the .NET services publish to, the bridge's
/// queues bound to them, and the dead-letter exchange with its queue. All durable; the
/// queues the bridge consumes are quorum queues that dead-letter a message after
/// [`DELIVERY_LIMIT`] deliveries.
pub async fn declare(channel: &Channel, settings: &Settings) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let queue = QueueDeclareOptions::durable();
    let none = FieldTable::default;
    channel
        .exchange_declare(
            settings.events_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            none(),
        )
        .await?;
    channel
        .exchange_declare(
            settings.commands_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            none(),
        )
        .await?;
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            none(),
        )
        .await?;
    let mut consumed = FieldTable::default();
    consumed.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    consumed.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    consumed.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(settings.dead_letter_exchange.as_str().into()),
    );
    for (name, exchange, key, arguments) in [
        (
            settings.events_queue(),
            &settings.events_exchange,
            "",
            consumed.clone(),
        ),
        (
            settings.commands_queue(),
            &settings.commands_exchange,
            settings.commands_routing_key.as_str(),
            consumed,
        ),
        (
            settings.dead_letter_queue(),
            &settings.dead_letter_exchange,
            "",
            none(),
        ),
    ] {
        channel
            .queue_declare(name.as_str().into(), queue, arguments)
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                none(),
            )
            .await?;
    }
    Ok(())
}

/// Runs `session` until `stop`, reconnecting with backoff after each failure. The session
/// is told whether the last one ended on a delivery it could not read ([`Error::unreadable`]):
/// that is no outage, so it reconnects at once, for RabbitMQ to count the delivery.
async fn supervise<F, Fut>(side: &'static str, mut stop: StopSignal, mut session: F)
where
    F: FnMut(StopSignal, bool) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    const FIRST: Duration = Duration::from_millis(200);
    let mut backoff = FIRST;
    let mut unreadable = false;
    loop {
        let started = std::time::Instant::now();
        let result = session(stop.clone(), unreadable).await;
        metrics::gauge!(CONNECTED, "side" => side).set(0.0);
        match result {
            Ok(()) => return,
            Err(e) => {
                unreadable = e.unreadable();
                if unreadable || started.elapsed() > Duration::from_secs(30) {
                    backoff = FIRST;
                }
                if unreadable {
                    metrics::counter!(UNREADABLE).increment(1);
                }
                tracing::warn!(side, error = %e, retry_in = ?backoff, "RabbitMQ bridge interrupted");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.wait() => return,
                }
                if !unreadable {
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
