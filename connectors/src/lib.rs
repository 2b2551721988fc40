//! Edges of the pipeline: the outbox relay, which publishes what commands and processors
//! wrote to the outbox, and the broker-facing tools (topics, offsets by time, consumer
//! groups, lag, offsets, dead letters), and the bridge to the .NET services' RabbitMQ.
//!
//! Every Kafka client starts from the shared configuration in `dhanman_plumbing::kafka`.
//!
//! It moves and measures records; it holds no business rule (commands live in `producers`,
//! postings and projections in `processors`).

pub mod dlq;
pub mod gauges;
pub mod groups;
pub mod kafka;
pub mod lag;
pub mod leader;
pub mod offsets;
pub mod parked;
pub mod rabbitmq;
pub mod relay;
pub mod retention;
pub mod retry;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Codec(#[from] dhanman_schemas::Error),
    /// An outbox row the relay cannot turn into a record (a defect, not a transient state).
    #[error("outbox row cannot be published: {0}")]
    Outbox(String),
    /// The broker could not answer what was asked (an unknown topic or partition, a look-up
    /// that did not finish).
    #[error("{0}")]
    Broker(String),
}

impl Error {
    /// Whether an outbox row failed for what it holds (no retry helps) rather than for
    /// the state of the database, the registry or the broker.
    pub fn is_unpublishable(&self) -> bool {
        match self {
            Error::Codec(e) => !e.is_transient(),
            Error::Outbox(_) => true,
            Error::Database(_) | Error::Kafka(_) | Error::Broker(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
