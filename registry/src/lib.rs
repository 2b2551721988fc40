//! Embedded schema registry speaking Confluent Schema Registry's REST API, stored in Postgres
//! (tables from `migrations/20261128000002_schema_registry.sql` and
//! `migrations/20261129000003_schema_registry_mode.sql`).
//!
//! Only AVRO schemas without references are supported. Registration deduplicates on the
//! schema's identity form (see [`ParsedSchema`]): whitespace, attribute order and how names are
//! qualified don't make a new schema, a changed default, alias, logical type or doc does; the
//! same schema gets the same global id in every subject. `?normalize=true` also ignores docs.
//! Registration enforces the subject's compatibility level (see
//! `compatibility::incompatibilities`) and mode (READWRITE, READONLY, IMPORT).
//!
//! Without the default `server` feature the crate is only [`ParsedSchema`] and the
//! compatibility checker, with no HTTP or Postgres dependencies (what `fuzz/` builds).
//!
//! It depends on no other crate of the pipeline: any Confluent client may use it alone.

mod avro;
mod compatibility;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
mod http;
#[cfg(feature = "server")]
mod registry;
#[cfg(feature = "server")]
pub mod users;

/// Without `server`: the errors of the parser and the checker, worded as in `error.rs`.
#[cfg(not(feature = "server"))]
mod error {
    pub type Result<T, E = Error> = std::result::Result<T, E>;

    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("Invalid schema: {0}")]
        InvalidSchema(String),
        #[error(
            "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
        )]
        InvalidCompatibilityLevel(String),
    }
}

pub use avro::ParsedSchema;
pub use compatibility::{
    CompatibilityLevel, Incompatibility, MAX_COMPARISONS, incompatibilities,
    reader_writer_incompatibilities,
};
pub use error::{Error, Result};
#[cfg(feature = "server")]
pub use http::router;
#[cfg(feature = "server")]
pub use registry::{Mode, RegisterOptions, Registry, SubjectVersion, VersionSelector};
