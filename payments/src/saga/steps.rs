//! The saga's state machine: each step persisted before the next begins. Charge the
//! gateway, reconcile an ambiguous answer, complete (invoice paid, payment and
//! `PaymentReceived` in one transaction), compensate (refund a charge that can no longer
//! be kept), or fail (`PaymentFailed`, no ledger change).

use dhanman_plumbing::outbox;
use dhanman_producers::Error as CommandError;
use dhanman_producers::sales::{self, PaymentRow, lock_invoice};
use dhanman_schemas::events::{Envelope, PaymentFailed};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::client::{ChargeOutcome, ChargeRequest, GatewayError, Method};
use crate::{Error, Result, metric};

use super::lease::Lease;
use super::{CrashPoint, Payments, Saga, charge_key, is_final, late_refund_key, refund_key};

impl Payments {
    pub(super) async fn advance(&self, mut saga: Saga, lease: &Lease) -> Result<()> {
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
    pub(super) async fn reconcile(
        &self,
        saga: &Saga,
        status: u16,
        body: &str,
        lease: &Lease,
    ) -> Result<()> {
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
    pub(super) async fn complete(&self, saga: &Saga, charge_id: &str, lease: &Lease) -> Result<()> {
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
    pub(super) async fn compensate(
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
    pub(super) async fn refund_late(
        &self,
        saga: &Saga,
        charge_id: &str,
        lease: &Lease,
    ) -> Result<()> {
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
    pub(super) async fn fail(
        &self,
        saga: &Saga,
        reason: &str,
        charge_id: Option<&str>,
    ) -> Result<()> {
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
    pub(super) async fn end_unpaid(
        &self,
        saga: &Saga,
        from: &[&str],
        ending: Ending<'_>,
    ) -> Result<()> {
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
    pub(super) async fn note(&self, id: Uuid, what: &str, detail: Value) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query("update payment_sagas set updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        step(&mut tx, id, what, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// How a saga without a payment ends.
pub(super) struct Ending<'a> {
    state: &'static str,
    reason: &'a str,
    charge_id: Option<&'a str>,
    refund_id: Option<&'a str>,
}

/// What `complete` decides on, the row locked until the transaction ends.
pub(super) struct LockedRow {
    state: String,
    charge_id: Option<String>,
    late_charge_id: Option<String>,
    late_refund_id: Option<String>,
}

pub(super) async fn locked_row(conn: &mut PgConnection, id: Uuid) -> Result<LockedRow> {
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
pub(super) async fn locked_state(conn: &mut PgConnection, id: Uuid) -> Result<String> {
    let (state,): (String,) =
        sqlx::query_as("select state from payment_sagas where id = $1 for update")
            .bind(id)
            .fetch_one(conn)
            .await?;
    Ok(state)
}

pub(super) async fn step(
    conn: &mut PgConnection,
    saga_id: Uuid,
    state: &str,
    detail: Value,
) -> Result<()> {
    sqlx::query("insert into payment_saga_steps (saga_id, state, detail) values ($1, $2, $3)")
        .bind(saga_id)
        .bind(state)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn payment_failed(
    conn: &mut PgConnection,
    saga: &Saga,
    reason: &str,
) -> Result<Uuid> {
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
