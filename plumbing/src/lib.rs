//! Plumbing shared by the command side (`producers`, `payments`, the API) and the consumer
//! side (`processors`, the relay and the other `connectors`): the outbox writer
//! ([`outbox`]), the W3C trace context that travels with the work ([`trace`]), the Kafka
//! client configuration every part of the pipeline starts from ([`kafka`]), Postgres
//! sessions kept beside a process's pool ([`postgres`]), and the message of a panic caught
//! where one record's handling must not end the process ([`panic_message`]).
//!
//! It knows no command, processor, route or table other than the outbox, and depends on
//! none of `producers`, `processors`, `connectors` or `api`: they depend on it.

pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod trace;

/// Failures of an outbox write.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message a caught panic carried (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
