//! `POST /v1/payments`: the request validated (each bad field named), the client's
//! `Idempotency-Key` looked up (the same key and body answer the first saga; another body
//! is 409), the saga recorded `started`, then driven as far as it goes now.

use dhanman_producers::Error as CommandError;
use dhanman_producers::sales::lock_invoice;
use dhanman_schemas::events::FieldError;
use rust_decimal::Decimal;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::client::Method;
use crate::{Error, Result};

use super::steps::step;
use super::{CrashPoint, NewPayment, PaymentRequest, PaymentView, Payments};

impl Payments {
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

    pub(super) async fn pay_inner(&self, request: PaymentRequest) -> Result<PaymentView> {
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

    pub(super) async fn by_key(&self, request: &PaymentRequest) -> Result<Option<Uuid>> {
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
    pub(super) async fn start(
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
}

pub(super) const KEY_CONSTRAINT: &str = "payment_sagas_idempotency_key";

pub(super) const INVOICE_CONSTRAINT: &str = "payment_sagas_one_per_invoice";

pub(super) fn validate(input: &NewPayment) -> Result<(Uuid, Method, Option<String>), FieldError> {
    let invoice_id = input
        .invoice_id
        .ok_or_else(|| FieldError::new("invoice_id", "is required"))?;
    let method = match input.method.as_deref().map(str::trim) {
        None | Some("") => return Err(FieldError::new("method", "is required")),
        Some(m) => Method::parse(m)
            .ok_or_else(|| FieldError::new("method", "must be upi, card or netbanking"))?,
    };
    use dhanman_producers::input::{Breaks, trimmed};
    let reference = trimmed(
        "reference",
        input.reference.as_deref(),
        200,
        Breaks::Refused,
    )?
    .map(str::to_string);
    Ok((invoice_id, method, reference))
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::Command(e.into())
    }
}
