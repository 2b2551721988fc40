//! Integration tests of dhanman-stream over real Postgres, a real Kafka-protocol broker
//! and the real binary. Run with `make test`.

// Test code: a failed unwrap is a failed test, and what it prints is for the reader.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod api;
mod audit;
mod batch;
mod bench;
mod bridge;
mod broker;
mod compose;
mod consistency;
mod corrections;
mod crash;
mod dashboard;
mod database;
mod demo;
mod dlq;
mod dlq_tool;
mod e2e;
mod evolution;
mod flows;
mod grouped;
mod helpers;
mod hostile;
mod interop;
mod kafka;
mod keys;
mod lag;
mod limits;
mod metrics;
mod monthly;
mod notifications;
mod offsets;
mod offsets_tool;
mod openapi;
mod outage;
mod payments;
mod purchase;
mod rebuild;
mod relay;
mod reminders;
mod replay;
mod retention;
mod salaries;
mod settings;
mod statement;
mod void;
