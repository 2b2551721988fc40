//! The payment saga: an invoice paid through the payment gateway.
//!
//! `POST /v1/payments` validates the invoice and records a saga (`started`), charges the
//! gateway over HTTP (`charging`), then in ONE transaction marks the invoice paid, inserts
//! the payment with its `PaymentReceived` in the outbox and marks the saga `completed`.
//! A decline fails the saga with `PaymentFailed` and no ledger change. A charge whose
//! invoice can no longer be paid (voided, or paid another way meanwhile) is refunded
//! (`charged` → `compensated`). Each step is persisted before the next begins, and the
//! gateway's idempotency keys derive from the saga id, so recovery after a crash at any
//! point charges again only as a replay: never a charge without a recorded payment, never
//! a paid invoice without a charge.
//!
//! When the gateway stays unreachable (retries spent, or the breaker open) the saga is
//! left `charging`, not failed: a timed-out or lost answer may hide a charge, and only the
//! gateway's replay under the same key can tell. The periodic recovery (and a retry of
//! the request with the same `Idempotency-Key`) resumes it. Likewise an answer that does
//! not prove that nothing moved (409, 404, 425, anything but 400/422): the saga stays
//! `charging` and asks the gateway what the key did, completing if it charged.
//!
//! One driver at a time: each saga has a lease (`lease_owner`, `lease_until`) that
//! `drive` takes in one UPDATE, renews before every gateway call and releases; a driver
//! that cannot take it calls nothing and answers the state as it is. A charge that lands
//! on a saga already final without it is refunded (`late_charge_refunded`), never kept.
//!
//! No database transaction is ever open across a gateway call.

pub mod breaker;
pub mod client;
pub mod saga;

pub use breaker::BreakerState;
pub use client::{GatewayClient, GatewayError, GatewaySettings, Method};
pub use saga::{CrashPoint, NewPayment, PaymentRequest, PaymentView, Payments, Step};

/// Metric names, one place.
pub mod metric {
    /// Gauge: 0 closed, 1 open, 2 half-open.
    pub const BREAKER_STATE: &str = "dhanman_gateway_breaker_state";
    /// Counter, labels `op` (charge, refund, lookup) and `outcome` (ok, declined,
    /// rejected, ambiguous, unavailable, timeout, network, breaker_open).
    pub const REQUESTS: &str = "dhanman_gateway_requests_total";
    /// Counter, label `op`: retries after a transient failure.
    pub const RETRIES: &str = "dhanman_gateway_retries_total";
    /// Histogram, label `op`: seconds per HTTP attempt.
    pub const REQUEST_DURATION: &str = "dhanman_gateway_request_duration_seconds";
    /// Counter, label `outcome` (completed, failed, compensated; and
    /// late_charge_refunded, a charge that landed on a saga already final, refunded):
    /// sagas finished.
    pub const SAGAS: &str = "dhanman_payment_sagas_total";
}

/// Failures of the saga's commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Validation (422), not found (404), conflict (409), database.
    #[error(transparent)]
    Command(#[from] dhanman_producers::Error),
    /// The gateway's breaker is open: nothing was recorded or sent (503).
    #[error("payment gateway unavailable; retry in {0:?}")]
    GatewayUnavailable(std::time::Duration),
    /// A bug or a panic; the message is for the log (500).
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Command(e.into())
    }
}

impl From<dhanman_plumbing::Error> for Error {
    fn from(e: dhanman_plumbing::Error) -> Self {
        Error::Command(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
