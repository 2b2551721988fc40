//! Embedded schema registry speaking Confluent Schema Registry's REST API, stored in Postgres
//! (tables from `migrations/20261128000002_schema_registry.sql`).
//!
//! Only AVRO schemas without references are supported. Registration deduplicates on the Avro
//! parsing canonical form: the same schema gets the same global id in every subject.
//! Registration enforces the subject's compatibility level (see
//! `compatibility::incompatibilities`).

mod avro;
mod compatibility;
mod error;
mod http;
mod registry;

pub use avro::ParsedSchema;
pub use compatibility::{CompatibilityLevel, incompatibilities};
pub use error::{Error, Result};
pub use http::router;
pub use registry::{Registry, SubjectVersion, VersionSelector};
