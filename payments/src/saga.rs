//! The saga's steps, its persistence and its recovery.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dhanman_producers::sales::{self, PaymentRow};
use dhanman_producers::{Error as CommandError, outbox};
use dhanman_schemas::events::{Envelope, FieldError, PaymentFailed};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::client::{ChargeOutcome, ChargeRequest, GatewayClient, GatewayError, Method};
use crate::{Error, Result, metric};

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
}

/// The gateway key of a saga's charge: the same on every attempt and after any crash.
pub fn charge_key(saga_id: Uuid) -> String {
    format!("dhanman-payment-{saga_id}")
}

fn refund_key(saga_id: Uuid) -> String {
    format!("dhanman-refund-{saga_id}")
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
        Payments {
            inner: Arc::new(Inner {
                pool,
                gateway,
                crash_at,
                recovery_interval,
            }),
        }
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
            eprintln!("DHANMAN_FAULT_CRASH_AT={point:?}: aborting on purpose");
            std::process::abort();
        }
    }

    /// `POST /v1/payments`: validates, records the saga, drives it as far as it goes now.
    /// The saga runs in a task of its own, so a client that hangs up does not stop it
    /// half-way.
    pub async fn pay(&self, request: PaymentRequest) -> Result<PaymentView> {
        let this = self.clone();
        let span = tracing::info_span!("payment", correlation_id = %request.correlation_id,
            idempotency_key = %request.idempotency_key, payment_id = tracing::field::Empty);
        tokio::spawn(async move { this.pay_inner(request).await }.instrument(span))
            .await
            .map_err(|e| Error::Internal(format!("the payment task failed: {e}")))?
    }

    async fn pay_inner(&self, request: PaymentRequest) -> Result<PaymentView> {
        let (invoice_id, method, reference) = validate(&request.input)?;
        // A retry of a request already taken: its saga's outcome, resumed if unfinished.
        if let Some(id) = self.by_key(&request).await? {
            return self.drive(id).await;
        }
        if let Some(wait) = self.inner.gateway.open_for() {
            return Err(Error::GatewayUnavailable(wait));
        }
        let id = match self
            .start(&request, invoice_id, method, reference.as_deref())
            .await
        {
            Ok(id) => id,
            // The same key raced in from another request: follow that one.
            Err(Error::Command(CommandError::Database(sqlx::Error::Database(db))))
                if db.constraint() == Some(KEY_CONSTRAINT) =>
            {
                let id = self.by_key(&request).await?.ok_or_else(|| {
                    Error::Command(CommandError::Conflict("Idempotency-Key in use".into()))
                })?;
                return self.drive(id).await;
            }
            Err(e) => return Err(e),
        };
        self.crash_point(CrashPoint::AfterStart);
        self.drive(id).await
    }

    async fn by_key(&self, request: &PaymentRequest) -> Result<Option<Uuid>> {
        let found: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
            "select id, request_hash from payment_sagas
              where organization_id = $1 and idempotency_key = $2",
        )
        .bind(request.organization_id)
        .bind(&request.idempotency_key)
        .fetch_optional(&self.inner.pool)
        .await?;
        match found {
            None => Ok(None),
            Some((id, hash)) if hash == request.request_hash => Ok(Some(id)),
            Some(_) => Err(CommandError::Conflict(
                "Idempotency-Key was already used with a different request".into(),
            )
            .into()),
        }
    }

    /// Checks the invoice and records the saga `started`, in one transaction.
    async fn start(
        &self,
        request: &PaymentRequest,
        invoice_id: Uuid,
        method: Method,
        reference: Option<&str>,
    ) -> Result<Uuid> {
        let mut tx = self.inner.pool.begin().await?;
        let invoice = open_invoice(&mut tx, request.organization_id, invoice_id)
            .await?
            .ok_or(CommandError::NotFound("invoice"))?;
        match invoice.status.as_str() {
            "paid" => {
                return Err(CommandError::Conflict(format!(
                    "invoice {invoice_id} is already paid"
                ))
                .into());
            }
            "void" => {
                return Err(CommandError::Conflict(format!("invoice {invoice_id} is void")).into());
            }
            _ => {}
        }
        let outstanding = invoice.outstanding();
        if outstanding <= Decimal::ZERO {
            return Err(CommandError::Conflict(format!(
                "invoice {invoice_id} has nothing outstanding"
            ))
            .into());
        }
        let id = Uuid::now_v7();
        tracing::Span::current().record("payment_id", tracing::field::display(id));
        let reference = reference.unwrap_or(&invoice.invoice_number);
        let inserted = sqlx::query(
            "insert into payment_sagas (id, organization_id, invoice_id, customer_id,
                 idempotency_key, request_hash, amount, currency, method, reference, correlation_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(request.organization_id)
        .bind(invoice_id)
        .bind(invoice.customer_id)
        .bind(&request.idempotency_key)
        .bind(&request.request_hash)
        .bind(outstanding)
        .bind(&invoice.currency)
        .bind(method.as_str())
        .bind(reference)
        .bind(&request.correlation_id)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(db)) = &inserted
            && db.constraint() == Some(INVOICE_CONSTRAINT)
        {
            return Err(CommandError::Conflict(format!(
                "invoice {invoice_id} already has a payment in progress or completed"
            ))
            .into());
        }
        inserted?;
        step(
            &mut tx,
            id,
            "started",
            json!({"amount": outstanding, "currency": invoice.currency, "method": method}),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(payment_id = %id, %invoice_id, amount = %outstanding, "payment saga started");
        Ok(id)
    }

    /// Takes the saga as far as it can go now; answers its state then.
    async fn drive(&self, id: Uuid) -> Result<PaymentView> {
        let saga = self.load(id).await?;
        let span =
            tracing::info_span!("saga", payment_id = %id, correlation_id = %saga.correlation_id);
        self.advance(saga).instrument(span).await?;
        self.view_by_id(id).await
    }

    async fn advance(&self, mut saga: Saga) -> Result<()> {
        if saga.state == "started" {
            let mut tx = self.inner.pool.begin().await?;
            let moved = sqlx::query(
                "update payment_sagas set state = 'charging', updated_at = now()
                  where id = $1 and state = 'started'",
            )
            .bind(saga.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 1 {
                step(
                    &mut tx,
                    saga.id,
                    "charging",
                    json!({"gateway_key": charge_key(saga.id)}),
                )
                .await?;
            }
            tx.commit().await?;
            saga = self.load(saga.id).await?;
        }
        if saga.state == "charging" {
            let method = Method::parse(&saga.method).ok_or_else(|| {
                CommandError::Conflict(format!("saga {} has method {}", saga.id, saga.method))
            })?;
            let request = ChargeRequest {
                amount: saga.amount,
                currency: &saga.currency,
                reference: &saga.reference,
                method,
            };
            match self
                .inner
                .gateway
                .charge(&charge_key(saga.id), &request)
                .await
            {
                Ok(ChargeOutcome::Charged { charge_id }) => {
                    self.crash_point(CrashPoint::AfterCharge);
                    self.complete(&saga, &charge_id).await?;
                }
                Ok(ChargeOutcome::Declined { charge_id, reason }) => {
                    self.fail(&saga, &format!("declined: {reason}"), Some(&charge_id))
                        .await?;
                }
                // Refused before any money moved (4xx): nothing to resume.
                Err(e @ GatewayError::Rejected { .. }) => {
                    tracing::error!(error = %e, "payment gateway refused the charge");
                    self.fail(&saga, &e.to_string(), None).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "charge not confirmed; the saga stays resumable");
                    self.note(
                        saga.id,
                        "charge_attempt_failed",
                        json!({"error": e.to_string()}),
                    )
                    .await?;
                }
            }
            saga = self.load(saga.id).await?;
        }
        if saga.state == "charged" {
            match saga.charge_id.clone() {
                // Charged and recorded as such: the completion found the invoice unpayable.
                Some(charge_id) => self.complete(&saga, &charge_id).await?,
                None => {
                    return Err(CommandError::Conflict(format!(
                        "saga {} is charged without a charge id",
                        saga.id
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    /// One transaction: the invoice paid, the payment and its `PaymentReceived`, the saga
    /// completed. When the invoice can no longer take this payment, the charge is
    /// recorded (`charged`) and then refunded.
    async fn complete(&self, saga: &Saga, charge_id: &str) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        let state = locked_state(&mut tx, saga.id).await?;
        if is_final(&state) {
            return Ok(());
        }
        let invoice = open_invoice(&mut tx, saga.organization_id, saga.invoice_id)
            .await?
            .ok_or(CommandError::NotFound("invoice"))?;
        let payable = invoice.status == "open"
            && invoice.outstanding() == saga.amount
            && invoice.currency == saga.currency;
        if !payable {
            let reason = format!(
                "invoice {} is {} with {} outstanding; the charge is refunded",
                saga.invoice_id,
                invoice.status,
                invoice.outstanding()
            );
            if state != "charged" {
                sqlx::query(
                    "update payment_sagas set state = 'charged', charge_id = $2,
                            failure_reason = $3, updated_at = now() where id = $1",
                )
                .bind(saga.id)
                .bind(charge_id)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                step(
                    &mut tx,
                    saga.id,
                    "charged",
                    json!({"charge_id": charge_id, "compensating": reason}),
                )
                .await?;
            }
            tx.commit().await?;
            tracing::warn!(%reason, "invoice no longer payable: compensating");
            return self.compensate(saga, charge_id, &reason).await;
        }
        sqlx::query("update invoices set status = 'paid' where id = $1")
            .bind(saga.invoice_id)
            .execute(&mut *tx)
            .await?;
        let token = sales::insert_payment(
            &mut tx,
            saga.organization_id,
            &saga.correlation_id,
            PaymentRow {
                payment_id: saga.id,
                customer_id: saga.customer_id,
                invoice_id: Some(saga.invoice_id),
                amount: saga.amount,
                currency: &saga.currency,
                method: &saga.method,
                reference: Some(charge_id),
            },
        )
        .await?;
        sqlx::query(
            "update payment_sagas set state = 'completed', charge_id = $2,
                    consistency_token = $3, updated_at = now() where id = $1",
        )
        .bind(saga.id)
        .bind(charge_id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        step(&mut tx, saga.id, "charged", json!({"charge_id": charge_id})).await?;
        step(
            &mut tx,
            saga.id,
            "completed",
            json!({"consistency_token": token}),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!(metric::SAGAS, "outcome" => "completed").increment(1);
        tracing::info!(%charge_id, event_id = %token, "payment saga completed");
        self.crash_point(CrashPoint::AfterComplete);
        Ok(())
    }

    /// Refunds the charge, then marks the saga `compensated` with a `PaymentFailed`. A
    /// refund that does not go through leaves the saga `charged` for recovery.
    async fn compensate(&self, saga: &Saga, charge_id: &str, reason: &str) -> Result<()> {
        self.crash_point(CrashPoint::BeforeRefund);
        let refund_id = match self
            .inner
            .gateway
            .refund(&refund_key(saga.id), charge_id)
            .await
        {
            Ok(refund_id) => refund_id,
            Err(e) => {
                tracing::error!(error = %e, %charge_id, "refund failed; recovery retries it");
                return self
                    .note(
                        saga.id,
                        "refund_attempt_failed",
                        json!({"error": e.to_string()}),
                    )
                    .await;
            }
        };
        self.crash_point(CrashPoint::AfterRefund);
        let ending = Ending {
            state: "compensated",
            reason,
            charge_id: None,
            refund_id: Some(&refund_id),
        };
        self.end_unpaid(saga, &["charged"], ending).await?;
        tracing::info!(%refund_id, "payment saga compensated: charge refunded");
        Ok(())
    }

    /// The saga failed with nothing charged: `PaymentFailed`, no ledger change.
    async fn fail(&self, saga: &Saga, reason: &str, charge_id: Option<&str>) -> Result<()> {
        let ending = Ending {
            state: "failed",
            reason,
            charge_id,
            refund_id: None,
        };
        self.end_unpaid(saga, &["started", "charging"], ending)
            .await?;
        tracing::info!(%reason, "payment saga failed");
        Ok(())
    }

    /// Ends a saga that recorded no payment (`failed`, `compensated`) in one transaction:
    /// `PaymentFailed`, the final state and its step; unless the saga has left the states
    /// `from` meanwhile (another process ended it), which changes nothing.
    async fn end_unpaid(&self, saga: &Saga, from: &[&str], ending: Ending<'_>) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        let state = locked_state(&mut tx, saga.id).await?;
        if !from.contains(&state.as_str()) {
            return Ok(());
        }
        let token = payment_failed(&mut tx, saga, ending.reason).await?;
        sqlx::query(
            "update payment_sagas
                set state = $2, failure_reason = $3, charge_id = coalesce($4, charge_id),
                    refund_id = coalesce($5, refund_id), consistency_token = $6,
                    updated_at = now()
              where id = $1",
        )
        .bind(saga.id)
        .bind(ending.state)
        .bind(ending.reason)
        .bind(ending.charge_id)
        .bind(ending.refund_id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        let detail = json!({"reason": ending.reason, "charge_id": ending.charge_id,
                            "refund_id": ending.refund_id});
        step(&mut tx, saga.id, ending.state, detail).await?;
        tx.commit().await?;
        metrics::counter!(metric::SAGAS, "outcome" => ending.state).increment(1);
        Ok(())
    }

    /// A step that changes no state (a failed attempt), for the log.
    async fn note(&self, id: Uuid, what: &str, detail: Value) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query("update payment_sagas set updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        step(&mut tx, id, what, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load(&self, id: Uuid) -> Result<Saga> {
        let saga = sqlx::query_as(
            "select id, organization_id, invoice_id, customer_id, amount,
                    currency::text as currency, method, reference, correlation_id, state, charge_id
               from payment_sagas where id = $1",
        )
        .bind(id)
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(saga)
    }

    /// `GET /v1/payments/{id}`: the saga with its steps, if it is the organization's.
    pub async fn find(&self, organization_id: Uuid, id: Uuid) -> Result<Option<PaymentView>> {
        let owner: Option<(Uuid,)> =
            sqlx::query_as("select organization_id from payment_sagas where id = $1")
                .bind(id)
                .fetch_optional(&self.inner.pool)
                .await?;
        match owner {
            Some((org,)) if org == organization_id => Ok(Some(self.view_by_id(id).await?)),
            _ => Ok(None),
        }
    }

    async fn view_by_id(&self, id: Uuid) -> Result<PaymentView> {
        let mut view: PaymentView = sqlx::query_as(
            "select id as payment_id, invoice_id, customer_id, amount,
                    currency::text as currency, method, reference, state, charge_id, refund_id,
                    failure_reason, consistency_token, created_at, updated_at
               from payment_sagas where id = $1",
        )
        .bind(id)
        .fetch_one(&self.inner.pool)
        .await?;
        view.steps = sqlx::query_as(
            "select state, detail, at from payment_saga_steps where saga_id = $1 order by id",
        )
        .bind(id)
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(view)
    }

    /// Resumes every unfinished saga (all of them, or those untouched for `idle`);
    /// answers how many were looked at. Each one's failure is logged, not returned.
    pub async fn recover(&self, idle: Option<Duration>) -> Result<usize> {
        let idle_ms = idle.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "select id from payment_sagas
              where state in ('started', 'charging', 'charged')
                and updated_at <= now() - make_interval(secs => $1::float8 / 1000)
              order by created_at",
        )
        .bind(idle_ms as f64)
        .fetch_all(&self.inner.pool)
        .await?;
        for (id,) in &ids {
            match self.drive(*id).await {
                Ok(view) => {
                    tracing::info!(payment_id = %id, state = %view.state, "payment saga recovered")
                }
                Err(e) => {
                    tracing::error!(payment_id = %id, error = %e, "payment saga recovery failed")
                }
            }
        }
        Ok(ids.len())
    }

    /// Recovery every `recovery_interval`, for sagas left unfinished while the gateway was
    /// unreachable. Never returns.
    pub async fn run_recovery(self) {
        let interval = self.inner.recovery_interval;
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.recover(Some(interval)).await {
                tracing::error!(error = %e, "payment saga recovery pass failed");
            }
        }
    }
}

/// How a saga without a payment ends.
struct Ending<'a> {
    state: &'static str,
    reason: &'a str,
    charge_id: Option<&'a str>,
    refund_id: Option<&'a str>,
}

/// The saga's state, its row locked until the transaction ends.
async fn locked_state(conn: &mut PgConnection, id: Uuid) -> Result<String> {
    let (state,): (String,) =
        sqlx::query_as("select state from payment_sagas where id = $1 for update")
            .bind(id)
            .fetch_one(conn)
            .await?;
    Ok(state)
}

const KEY_CONSTRAINT: &str = "payment_sagas_organization_id_idempotency_key_key";
const INVOICE_CONSTRAINT: &str = "payment_sagas_one_per_invoice";

fn validate(input: &NewPayment) -> Result<(Uuid, Method, Option<String>), FieldError> {
    let invoice_id = input
        .invoice_id
        .ok_or_else(|| FieldError::new("invoice_id", "is required"))?;
    let method = match input.method.as_deref().map(str::trim) {
        None | Some("") => return Err(FieldError::new("method", "is required")),
        Some(m) => Method::parse(m)
            .ok_or_else(|| FieldError::new("method", "must be upi, card or netbanking"))?,
    };
    let reference = match input.reference.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) if r.chars().count() > 200 || r.chars().any(char::is_control) => {
            return Err(FieldError::new(
                "reference",
                "must be at most 200 printable characters",
            ));
        }
        Some(r) => Some(r.to_string()),
    };
    Ok((invoice_id, method, reference))
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::Command(e.into())
    }
}

struct InvoiceRow {
    customer_id: Uuid,
    invoice_number: String,
    amount: Decimal,
    currency: String,
    status: String,
    paid: Decimal,
}

impl InvoiceRow {
    fn outstanding(&self) -> Decimal {
        (self.amount - self.paid).round_dp(2)
    }
}

/// The invoice, locked for the transaction (the lock manual payments and voids take).
async fn open_invoice(
    conn: &mut PgConnection,
    organization_id: Uuid,
    invoice_id: Uuid,
) -> Result<Option<InvoiceRow>> {
    let row: Option<(Uuid, String, Decimal, String, String)> = sqlx::query_as(
        "select customer_id, invoice_number, amount, currency::text, status from invoices
          where id = $1 and organization_id = $2 for update",
    )
    .bind(invoice_id)
    .bind(organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((customer_id, invoice_number, amount, currency, status)) = row else {
        return Ok(None);
    };
    let (paid,): (Decimal,) =
        sqlx::query_as("select coalesce(sum(amount), 0) from payments where invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Some(InvoiceRow {
        customer_id,
        invoice_number,
        amount,
        currency: currency.trim().to_string(),
        status,
        paid,
    }))
}

async fn step(conn: &mut PgConnection, saga_id: Uuid, state: &str, detail: Value) -> Result<()> {
    sqlx::query("insert into payment_saga_steps (saga_id, state, detail) values ($1, $2, $3)")
        .bind(saga_id)
        .bind(state)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

async fn payment_failed(conn: &mut PgConnection, saga: &Saga, reason: &str) -> Result<Uuid> {
    let event = PaymentFailed {
        envelope: Envelope::new(saga.organization_id, &saga.correlation_id, None),
        payment_id: saga.id,
        invoice_id: saga.invoice_id,
        customer_id: saga.customer_id,
        amount: saga.amount,
        currency: saga.currency.clone(),
        reason: reason.to_string(),
    };
    Ok(outbox::enqueue(conn, &event).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(invoice: Option<Uuid>, method: Option<&str>, reference: Option<&str>) -> NewPayment {
        NewPayment {
            invoice_id: invoice,
            method: method.map(str::to_string),
            reference: reference.map(str::to_string),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let id = Some(Uuid::now_v7());
        let field = |i: NewPayment| validate(&i).unwrap_err().field;
        assert_eq!(field(input(None, Some("upi"), None)), "invoice_id");
        assert_eq!(field(input(id, None, None)), "method");
        assert_eq!(field(input(id, Some("cash"), None)), "method");
        let long = "x".repeat(201);
        assert_eq!(field(input(id, Some("card"), Some(&long))), "reference");
        let (_, method, reference) = validate(&input(id, Some("card"), Some(" "))).unwrap();
        assert_eq!(method, Method::Card);
        assert_eq!(reference, None);
    }

    #[test]
    fn crash_points_parse() {
        assert_eq!(
            CrashPoint::parse("after-charge"),
            Ok(CrashPoint::AfterCharge)
        );
        assert!(CrashPoint::parse("later").is_err());
    }

    #[test]
    fn gateway_keys_are_deterministic_per_saga() {
        let id = Uuid::now_v7();
        assert_eq!(charge_key(id), charge_key(id));
        assert_ne!(charge_key(id), refund_key(id));
        assert_ne!(charge_key(id), charge_key(Uuid::now_v7()));
    }
}
