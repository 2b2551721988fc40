//! Integration tests of dhanman-stream over real Postgres, a real Kafka-protocol broker
//! and the real binary. Run with `make test`.

mod api;
mod broker;
mod crash;
mod dlq;
mod e2e;
mod evolution;
mod flows;
mod helpers;
mod interop;
mod monthly;
mod offsets;
mod outage;
mod payments;
mod purchase;
mod salaries;
mod statement;
mod void;
