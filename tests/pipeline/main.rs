//! Integration tests of dhanman-stream over real Postgres, a real Kafka-protocol broker
//! and the real binary. Run with `make test`.

mod api;
mod audit;
mod broker;
mod compose;
mod crash;
mod dashboard;
mod demo;
mod dlq;
mod dlq_tool;
mod e2e;
mod evolution;
mod flows;
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
mod outage;
mod payments;
mod purchase;
mod rebuild;
mod relay;
mod reminders;
mod replay;
mod retention;
mod salaries;
mod statement;
mod void;
