//! The saga's steps, its persistence, its lease and its recovery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dhanman_producers::sales::{self, PaymentRow, lock_invoice};
use dhanman_producers::{Error as CommandError, outbox};
use dhanman_schemas::events::{Envelope, FieldError, PaymentFailed};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
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

/// Namespace ("dhmn") of the session-level advisory locks that say a lease's owner
/// process is alive: `(LIVENESS_LOCKS, payment_sagas.lease_lock)`.
const LIVENESS_LOCKS: i32 = 0x6468_6d6e;

/// What the lease adds to the gateway client's [`GatewayClient::call_budget`]: the
/// database round trips between renewing it and the call, and after the call.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How long a liveness connection that answered is trusted without asking again.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// One `drive`'s hold on a saga: `lease_owner` is this drive's alone, so a drive that
/// lost the lease (it lapsed and another took it) cannot renew or release the other's.
struct Lease {
    owner: String,
}

/// This process's proof of life: a connection outside the pool holding the advisory lock
/// `(LIVENESS_LOCKS, key)` for as long as it lives. When the process dies the connection
/// closes and Postgres drops the lock, which frees every lease the process held at once.
struct Liveness {
    key: i32,
    conn: Option<PgConnection>,
    checked: Option<Instant>,
}

fn liveness_key() -> i32 {
    // Positive, so it casts to an `oid` (what `pg_locks.objid` is) unchanged.
    (Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32
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
                liveness: tokio::sync::Mutex::new(Liveness {
                    key: liveness_key(),
                    conn: None,
                    checked: None,
                }),
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
        // The user's own saga under this key, or one recorded before keys belonged to users
        // (the nil user), which is nobody's to replay.
        let found: Option<(Uuid, Vec<u8>, Uuid)> = sqlx::query_as(
            "select id, request_hash, user_id from payment_sagas
              where organization_id = $1 and idempotency_key = $2
                and user_id in ($3, '00000000-0000-0000-0000-000000000000')
              order by user_id = $3 desc
              limit 1",
        )
        .bind(request.organization_id)
        .bind(&request.idempotency_key)
        .bind(request.user_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        match found {
            None => Ok(None),
            Some((_, _, user)) if user != request.user_id => Err(CommandError::Conflict(
                "Idempotency-Key was used before keys belonged to users; use a new one".into(),
            )
            .into()),
            Some((id, hash, _)) if hash == request.request_hash => Ok(Some(id)),
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
        let invoice = lock_invoice(&mut tx, request.organization_id, invoice_id)
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
                 idempotency_key, request_hash, amount, currency, method, reference, correlation_id,
                 user_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        .bind(request.user_id)
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
        Ok(self.try_drive(id).await?.0)
    }

    /// Takes the saga's lease, advances it and releases the lease; answers its state then,
    /// and whether this driver held the lease. A driver that cannot take it (another one
    /// holds it) calls nothing and answers the state as it is: in flight.
    async fn try_drive(&self, id: Uuid) -> Result<(PaymentView, bool)> {
        let Some(lease) = self.take_lease(id).await? else {
            return Ok((self.view_by_id(id).await?, false));
        };
        let advanced = self.advance_leased(id, &lease).await;
        let released = self.release(id, &lease).await;
        advanced?;
        released?;
        Ok((self.view_by_id(id).await?, true))
    }

    async fn advance_leased(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let saga = self.load(id).await?;
        let span =
            tracing::info_span!("saga", payment_id = %id, correlation_id = %saga.correlation_id);
        self.advance(saga, lease).instrument(span).await
    }

    /// Takes the lease when the saga has work left (unfinished, or a late charge to
    /// refund) and the lease is free: released, lapsed, or held by a process that is gone
    /// (its liveness lock is not held). One UPDATE, so two drivers never both get it.
    async fn take_lease(&self, id: Uuid) -> Result<Option<Lease>> {
        let key = self.alive().await?;
        let lease = Lease {
            owner: format!("{}:{}", std::process::id(), Uuid::now_v7()),
        };
        let taken: Option<(Uuid,)> = sqlx::query_as(
            "update payment_sagas s
                set lease_owner = $2, lease_lock = $3,
                    lease_until = now() + make_interval(secs => $4)
              where s.id = $1
                and (s.state in ('started', 'charging', 'charged')
                     or (s.late_charge_id is not null and s.late_refund_id is null))
                and (s.lease_until is null or s.lease_until <= now()
                     or not exists (
                        select 1 from pg_locks l
                         where l.locktype = 'advisory' and l.granted and l.objsubid = 2
                           and l.database = (select oid from pg_database
                                              where datname = current_database())
                           and l.classid = ($5::int4)::oid and l.objid = s.lease_lock::oid))
              returning s.id",
        )
        .bind(id)
        .bind(&lease.owner)
        .bind(key)
        .bind(self.inner.lease.as_secs_f64())
        .bind(LIVENESS_LOCKS)
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(taken.map(|_| lease))
    }

    /// Extends the lease by a full term before a gateway call; `false` when this driver
    /// no longer holds it (it lapsed and another driver took it): then it must not call.
    async fn renew(&self, id: Uuid, lease: &Lease) -> Result<bool> {
        let renewed = sqlx::query(
            "update payment_sagas set lease_until = now() + make_interval(secs => $3)
              where id = $1 and lease_owner = $2",
        )
        .bind(id)
        .bind(&lease.owner)
        .bind(self.inner.lease.as_secs_f64())
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        if renewed == 0 {
            tracing::warn!(payment_id = %id, "the saga's lease was lost; leaving it to its holder");
        }
        Ok(renewed == 1)
    }

    async fn release(&self, id: Uuid, lease: &Lease) -> Result<()> {
        sqlx::query(
            "update payment_sagas set lease_owner = null, lease_until = null, lease_lock = null
              where id = $1 and lease_owner = $2",
        )
        .bind(id)
        .bind(&lease.owner)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// This process's liveness key, its lock held (taken, or taken again on a new
    /// connection when the last one broke).
    async fn alive(&self) -> Result<i32> {
        let mut guard = self.inner.liveness.lock().await;
        let live = &mut *guard;
        if let Some(conn) = live.conn.as_mut() {
            if live.checked.is_some_and(|at| at.elapsed() < LIVENESS_CHECK) {
                return Ok(live.key);
            }
            if conn.ping().await.is_ok() {
                live.checked = Some(Instant::now());
                return Ok(live.key);
            }
            tracing::warn!("the payment saga's liveness connection broke; taking its lock again");
            live.conn = None;
        }
        loop {
            let mut conn = self.inner.pool.acquire().await?.detach();
            let (got,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1, $2)")
                .bind(LIVENESS_LOCKS)
                .bind(live.key)
                .fetch_one(&mut conn)
                .await?;
            if got {
                live.conn = Some(conn);
                live.checked = Some(Instant::now());
                return Ok(live.key);
            }
            // Another live process drew the same key: draw again.
            let _ = conn.close().await;
            live.key = liveness_key();
        }
    }

    async fn advance(&self, mut saga: Saga, lease: &Lease) -> Result<()> {
        if is_final(&saga.state) {
            // Final, with a late charge whose refund did not go through yet.
            if let (Some(charge_id), None) = (saga.late_charge_id.clone(), &saga.late_refund_id) {
                self.refund_late(&saga, &charge_id, lease).await?;
            }
            return Ok(());
        }
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
            if !self.renew(saga.id, lease).await? {
                return Ok(());
            }
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
                    self.complete(&saga, &charge_id, lease).await?;
                }
                Ok(ChargeOutcome::Declined { charge_id, reason }) => {
                    self.fail(&saga, &format!("declined: {reason}"), Some(&charge_id))
                        .await?;
                }
                // 400 or 422: the gateway could not accept the request, nothing moved.
                Err(e @ GatewayError::Rejected { .. }) => {
                    tracing::error!(error = %e, "payment gateway refused the charge");
                    self.fail(&saga, &e.to_string(), None).await?;
                }
                // Money may have moved: ask the gateway what the key did.
                Err(GatewayError::Ambiguous { status, body }) => {
                    self.reconcile(&saga, status, &body, lease).await?;
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
                Some(charge_id) => self.complete(&saga, &charge_id, lease).await?,
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

    /// After an ambiguous answer to the charge (409, 404, 425, …): the saga stays
    /// `charging` unless the gateway, asked what the charge key did, says it charged
    /// (complete) or declined (fail). Nothing found: recovery charges again later, under
    /// the same key.
    async fn reconcile(&self, saga: &Saga, status: u16, body: &str, lease: &Lease) -> Result<()> {
        tracing::warn!(status, %body, "ambiguous answer to the charge; asking the gateway what the key did");
        let answer: String = body.chars().take(500).collect();
        self.note(
            saga.id,
            "charge_ambiguous",
            json!({"status": status, "answer": answer}),
        )
        .await?;
        if !self.renew(saga.id, lease).await? {
            return Ok(());
        }
        match self.inner.gateway.lookup(&charge_key(saga.id)).await {
            Ok(Some(ChargeOutcome::Charged { charge_id })) => {
                tracing::info!(%charge_id, "the gateway charged under the key: completing");
                self.complete(saga, &charge_id, lease).await
            }
            Ok(Some(ChargeOutcome::Declined { charge_id, reason })) => {
                self.fail(saga, &format!("declined: {reason}"), Some(&charge_id))
                    .await
            }
            Ok(None) => {
                tracing::warn!("nothing charged under the key yet; the saga stays resumable");
                self.note(saga.id, "charge_not_found", json!({"status": status}))
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "charge lookup failed; the saga stays resumable");
                self.note(
                    saga.id,
                    "charge_lookup_failed",
                    json!({"error": e.to_string()}),
                )
                .await
            }
        }
    }

    /// One transaction: the invoice paid, the payment and its `PaymentReceived`, the saga
    /// completed. When the invoice can no longer take this payment, the charge is
    /// recorded (`charged`) and then refunded. When the saga is already final without
    /// this charge (failed, or ended by another driver meanwhile), the charge is a late
    /// one: recorded and refunded, never kept.
    async fn complete(&self, saga: &Saga, charge_id: &str, lease: &Lease) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        let row = locked_row(&mut tx, saga.id).await?;
        let state = row.state;
        if is_final(&state) {
            // The saga's own charge, recorded (completed) or already refunded (compensated).
            let own = matches!(state.as_str(), "completed" | "compensated")
                && row.charge_id.as_deref() == Some(charge_id);
            if own {
                return Ok(());
            }
            match row.late_charge_id.as_deref() {
                None => {
                    sqlx::query(
                        "update payment_sagas set late_charge_id = $2, updated_at = now()
                          where id = $1",
                    )
                    .bind(saga.id)
                    .bind(charge_id)
                    .execute(&mut *tx)
                    .await?;
                    step(
                        &mut tx,
                        saga.id,
                        "late_charge",
                        json!({"charge_id": charge_id, "saga_state": state}),
                    )
                    .await?;
                    tx.commit().await?;
                }
                Some(late) if late == charge_id => {
                    tx.commit().await?;
                    if row.late_refund_id.is_some() {
                        return Ok(());
                    }
                }
                Some(late) => {
                    // One key makes one charge: a second one would be a gateway bug.
                    return Err(Error::Internal(format!(
                        "saga {} got charge {charge_id} after late charge {late}; \
                         refund it by hand",
                        saga.id
                    )));
                }
            }
            tracing::warn!(%charge_id, %state, "a charge landed on a saga already final: refunding it");
            return self.refund_late(saga, charge_id, lease).await;
        }
        let invoice = lock_invoice(&mut tx, saga.organization_id, saga.invoice_id)
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
            return self.compensate(saga, charge_id, &reason, lease).await;
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
    async fn compensate(
        &self,
        saga: &Saga,
        charge_id: &str,
        reason: &str,
        lease: &Lease,
    ) -> Result<()> {
        self.crash_point(CrashPoint::BeforeRefund);
        if !self.renew(saga.id, lease).await? {
            return Ok(());
        }
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

    /// Refunds a late charge under the saga's late-refund key and records it (the step
    /// `late_charge_refunded`, counted in the saga metric). A refund that does not go
    /// through is left to recovery, which retries it under the same key.
    async fn refund_late(&self, saga: &Saga, charge_id: &str, lease: &Lease) -> Result<()> {
        if !self.renew(saga.id, lease).await? {
            return Ok(());
        }
        let refund_id = match self
            .inner
            .gateway
            .refund(&late_refund_key(saga.id), charge_id)
            .await
        {
            Ok(refund_id) => refund_id,
            Err(e) => {
                tracing::error!(error = %e, %charge_id, "refund of a late charge failed; recovery retries it");
                return self
                    .note(
                        saga.id,
                        "late_charge_refund_failed",
                        json!({"charge_id": charge_id, "error": e.to_string()}),
                    )
                    .await;
            }
        };
        let mut tx = self.inner.pool.begin().await?;
        let recorded = sqlx::query(
            "update payment_sagas set late_refund_id = $2, updated_at = now()
              where id = $1 and late_refund_id is null",
        )
        .bind(saga.id)
        .bind(&refund_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 1 {
            step(
                &mut tx,
                saga.id,
                "late_charge_refunded",
                json!({"charge_id": charge_id, "refund_id": refund_id}),
            )
            .await?;
        }
        tx.commit().await?;
        if recorded == 1 {
            metrics::counter!(metric::SAGAS, "outcome" => "late_charge_refunded").increment(1);
            tracing::info!(%charge_id, %refund_id, "late charge refunded");
        }
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
                    currency::text as currency, method, reference, correlation_id, state, charge_id,
                    late_charge_id, late_refund_id
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

    /// Resumes every unfinished saga, and every late charge not yet refunded (all of
    /// them, or those untouched for `idle`, or whose driver's lease lapsed); answers how
    /// many were looked at. A saga whose lease a live driver holds is left to it. Each
    /// one's failure is logged, not returned.
    pub async fn recover(&self, idle: Option<Duration>) -> Result<usize> {
        let idle_ms = idle.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "select id from payment_sagas
              where (state in ('started', 'charging', 'charged')
                     or (late_charge_id is not null and late_refund_id is null))
                and (updated_at <= now() - make_interval(secs => $1::float8 / 1000)
                     or lease_until <= now())
              order by created_at",
        )
        .bind(idle_ms as f64)
        .fetch_all(&self.inner.pool)
        .await?;
        for (id,) in &ids {
            match self.try_drive(*id).await {
                Ok((view, true)) => {
                    tracing::info!(payment_id = %id, state = %view.state, "payment saga recovered")
                }
                Ok((view, false)) => {
                    tracing::info!(payment_id = %id, state = %view.state,
                        "payment saga left to the driver holding its lease")
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

/// What `complete` decides on, the row locked until the transaction ends.
struct LockedRow {
    state: String,
    charge_id: Option<String>,
    late_charge_id: Option<String>,
    late_refund_id: Option<String>,
}

async fn locked_row(conn: &mut PgConnection, id: Uuid) -> Result<LockedRow> {
    let (state, charge_id, late_charge_id, late_refund_id) = sqlx::query_as(
        "select state, charge_id, late_charge_id, late_refund_id
           from payment_sagas where id = $1 for update",
    )
    .bind(id)
    .fetch_one(conn)
    .await?;
    Ok(LockedRow {
        state,
        charge_id,
        late_charge_id,
        late_refund_id,
    })
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

const KEY_CONSTRAINT: &str = "payment_sagas_idempotency_key";
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
        assert_ne!(late_refund_key(id), refund_key(id));
        assert_ne!(late_refund_key(id), charge_key(id));
        assert_ne!(charge_key(id), charge_key(Uuid::now_v7()));
    }
}
