//! Consumers of the pipeline: the runtime that every processor plugs into (`runtime`), the
//! processors themselves (one module each), the list of them all (`catalog`), and the loop
//! their companion workers share (`companion`). The ledger's read side sits beside its
//! poster (`ledger::read`: balances, the trial balance, statements, entries), and
//! `applied` answers whether a processor has applied an event (consistency tokens); the
//! API serves both.
//!
//! A processor never produces to Kafka or calls a peer inside a batch: its effects are rows
//! written in the batch's transaction (events through the outbox, emails through the
//! delivery log), so a batch that rolls back leaves nothing behind. It writes the outbox
//! through `dhanman_plumbing`, never through the command side (`producers`).

pub mod applied;
pub mod approvals;
pub mod audit;
pub mod balances;
pub mod catalog;
pub mod companion;
#[cfg(test)]
mod fixtures;
pub mod ledger;
pub mod notifier;
pub mod reminders;
pub mod runtime;
pub mod stop;
pub mod users;

pub use runtime::{Applied, ApplyError, Incoming, Processor, Runtime, RuntimeConfig};
pub use stop::{Stop, Stopper};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Codec(#[from] dhanman_schemas::Error),
    #[error(transparent)]
    Apply(#[from] runtime::ApplyError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
