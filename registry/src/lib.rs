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

mod avro;
mod compatibility;
mod error;
mod http;
mod registry;

pub use avro::ParsedSchema;
pub use compatibility::{
    CompatibilityLevel, Incompatibility, incompatibilities, reader_writer_incompatibilities,
};
pub use error::{Error, Result};
pub use http::router;
pub use registry::{Mode, RegisterOptions, Registry, SubjectVersion, VersionSelector};
