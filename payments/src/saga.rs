//! The saga's types (the request, the view, the internal row, the gateway keys) and the
//! runner, [`Payments`]. What it does lives beside it, one file per part:
//! - `request`: `POST /v1/payments`: validation, the idempotency key, recording the saga;
//! - `lease`: one driver at a time: the lease on a saga and the process's liveness lock;
//! - `steps`: the state machine: charge, reconcile, complete, compensate, fail;
//! - `views`: reading a saga back, as the API shows it;
//! - `recovery`: finishing the sagas a crash or an unreachable gateway left unfinished.

mod lease;
mod recovery;
mod request;
mod steps;
#[cfg(test)]
mod tests;
mod views;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::client::GatewayClient;

use lease::{LEASE_MARGIN, Liveness};

/// Where a test makes the process die (`DHANMAN_FAULT_CRASH_AT`): `std::process::abort()`,
/// no shutdown code, exactly like a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The saga is recorded (`started`); the gateway has not been called.
    AfterStart,
    /// The gateway charged; nothing of it is recorded yet.
    AfterCharge,
    /// The payment is recorded and the saga completed; no answer was sent.
    AfterComplete,
    /// Compensation: the charge is recorded (`charged`), the refund not yet asked for.
    BeforeRefund,
    /// Compensation: the gateway refunded; the saga does not know yet.
    AfterRefund,
}

impl CrashPoint {
    pub fn parse(raw: &str) -> std::result::Result<CrashPoint, String> {
        match raw {
            "after-start" => Ok(CrashPoint::AfterStart),
            "after-charge" => Ok(CrashPoint::AfterCharge),
            "after-complete" => Ok(CrashPoint::AfterComplete),
            "before-refund" => Ok(CrashPoint::BeforeRefund),
            "after-refund" => Ok(CrashPoint::AfterRefund),
            other => Err(format!(
                "unknown crash point {other:?}; known: after-start, after-charge, \
                 after-complete, before-refund, after-refund"
            )),
        }
    }
}

/// The body of `POST /v1/payments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPayment {
    pub invoice_id: Option<Uuid>,
    /// `upi`, `card` or `netbanking`.
    pub method: Option<String>,
    /// Shown on the gateway's charge; the invoice number when absent.
    pub reference: Option<String>,
}

/// One payment request, as the API hands it over.
pub struct PaymentRequest {
    pub organization_id: Uuid,
    /// The user whose key sent it: an `Idempotency-Key` is that user's.
    pub user_id: Uuid,
    pub correlation_id: String,
    pub idempotency_key: String,
    /// Hash of the request (method, path, body): a reused key with another body is 409.
    pub request_hash: Vec<u8>,
    pub input: NewPayment,
}

/// A saga as `GET /v1/payments/{id}` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub method: String,
    pub reference: String,
    /// `started`, `charging`, `charged`, `completed`, `failed` or `compensated`.
    pub state: String,
    pub charge_id: Option<String>,
    pub refund_id: Option<String>,
    pub failure_reason: Option<String>,
    /// The `PaymentReceived` (or `PaymentFailed`) event id, for `?consistent_with=`.
    pub consistency_token: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub steps: Vec<Step>,
}

impl PaymentView {
    pub fn is_final(&self) -> bool {
        is_final(&self.state)
    }
}

/// One line of the saga's log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Step {
    pub state: String,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "compensated")
}

/// The saga's internal row.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Saga {
    id: Uuid,
    organization_id: Uuid,
    invoice_id: Uuid,
    customer_id: Uuid,
    amount: Decimal,
    currency: String,
    method: String,
    reference: String,
    correlation_id: String,
    state: String,
    charge_id: Option<String>,
    late_charge_id: Option<String>,
    late_refund_id: Option<String>,
}

/// The gateway key of a saga's charge: the same on every attempt and after any crash.
pub fn charge_key(saga_id: Uuid) -> String {
    format!("dhanman-payment-{saga_id}")
}

fn refund_key(saga_id: Uuid) -> String {
    format!("dhanman-refund-{saga_id}")
}

/// The gateway key of the refund of a late charge: one per saga, as the charge key makes
/// at most one charge.
fn late_refund_key(saga_id: Uuid) -> String {
    format!("dhanman-late-refund-{saga_id}")
}

/// The saga runner; clones share it.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    gateway: GatewayClient,
    crash_at: Option<CrashPoint>,
    recovery_interval: Duration,
    lease: Duration,
    liveness: tokio::sync::Mutex<Liveness>,
}

impl Payments {
    pub fn new(
        pool: PgPool,
        gateway: GatewayClient,
        crash_at: Option<CrashPoint>,
        recovery_interval: Duration,
    ) -> Self {
        if let Some(point) = crash_at {
            tracing::warn!(
                ?point,
                "DHANMAN_FAULT_CRASH_AT is set: this process will abort on purpose"
            );
        }
        let lease = gateway.call_budget().saturating_add(LEASE_MARGIN);
        Payments {
            inner: Arc::new(Inner {
                pool,
                gateway,
                crash_at,
                recovery_interval,
                lease,
                liveness: tokio::sync::Mutex::new(Liveness::new()),
            }),
        }
    }

    /// How long a driver's lease on a saga lasts from its last renewal: one gateway call
    /// with every retry and backoff ([`GatewayClient::call_budget`]) plus a margin. It is
    /// renewed before every gateway call, so a live driver never loses it mid-call.
    pub fn lease_duration(&self) -> Duration {
        self.inner.lease
    }

    pub fn gateway(&self) -> &GatewayClient {
        &self.inner.gateway
    }

    /// How long a client should wait before retrying a payment left unfinished.
    pub fn retry_after(&self) -> Duration {
        self.inner
            .gateway
            .open_for()
            .unwrap_or(self.inner.recovery_interval)
    }

    fn crash_point(&self, point: CrashPoint) {
        if self.inner.crash_at == Some(point) {
            // Straight to stderr: an abort gives the log no chance to flush.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("DHANMAN_FAULT_CRASH_AT={point:?}: aborting on purpose");
            }
            std::process::abort();
        }
    }
}
