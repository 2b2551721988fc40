//! The operations commands of the `dhanman` binary — `schemas`, `lag`, `offsets`,
//! `replay`, `dlq`, `outbox`, `audit`, `jobs`, `registry`, `rebuild`, `bridge` — and its
//! demo, benchmark and fault campaign; with them, the settings every part reads
//! ([`Config`]) and the start-up steps the commands share with the binary ([`startup`]).
//!
//! It must not depend on the `dhanman` package (which dispatches to it) nor start the
//! pipeline's long-running parts itself: the demo is handed the pipeline to run, and the
//! benchmark and the campaign run the `dhanman` executable.

// These commands print their reports: stdout is their interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod audit_cli;
pub mod bench;
pub mod bridge_cli;
pub mod calendar;
pub mod campaign;
pub mod demo;
pub mod dlq_cli;
pub mod jobs_cli;
pub mod lag_cli;
pub mod offsets_cli;
pub mod outbox_cli;
pub mod rebuild_cli;
pub mod registry_cli;
pub mod replay_cli;
pub mod schemas_cli;
mod settings;
pub mod startup;

pub use settings::{
    ALIASED, Aliased, Config, Connections, DATABASE_URL, DatabaseUrl, KAFKA_BOOTSTRAP_SERVERS,
    KafkaBootstrapServers, LagSettings, SCHEMA_REGISTRY_URL, SMTP_URL, SchemaRegistryUrl, SmtpUrl,
    connect_options, refused_variable,
};
pub use startup::{
    MIGRATOR, ProcessorJob, STOP_TIMEOUT, bind_api, bind_metrics, ensure_topics, migrate,
    register_local_schemas, stop_on_signals, with_metrics, with_processor,
};
