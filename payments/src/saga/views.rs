//! Reading sagas back: the internal row a driver works on, and the view with its step log
//! that `GET /v1/payments/{id}` shows.

use uuid::Uuid;

use crate::Result;

use super::{PaymentView, Payments, Saga};

impl Payments {
    pub(super) async fn load(&self, id: Uuid) -> Result<Saga> {
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

    pub(super) async fn view_by_id(&self, id: Uuid) -> Result<PaymentView> {
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
}
