//! The contracts of dhanman-stream: the Avro schemas under `schemas/avro/` (the source of
//! truth), the Rust types of the events, and the Confluent wire-format codec that moves
//! them through a schema registry.
//!
//! It knows no database and no broker: its only I/O is the codec's registry look-ups.

pub mod catalog;
pub mod codec;
pub mod events;
pub mod json;
pub mod topics;
pub mod typed;

pub use catalog::{Catalog, RecordSchema};
pub use codec::{Codec, Decoded};
pub use events::{Envelope, Event};

/// Errors of encoding and decoding records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not be reached or answered 5xx: try again later.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The bytes are not a record we can read (bad magic byte, unknown schema id,
    /// corrupt Avro, a record type no local schema knows).
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// The value does not fit its schema or fails validation.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// A local schema file is broken (a bug in this repository).
    #[error("schema {name}: {reason}")]
    Schema { name: String, reason: String },
}

impl Error {
    /// Whether retrying the same input later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::RegistryUnavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
