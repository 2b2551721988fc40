//! Recovery: sagas left unfinished (a crash, an unreachable gateway) are picked up again,
//! at start-up and periodically, and finished or compensated.

use std::time::Duration;

use uuid::Uuid;

use crate::Result;

use super::Payments;

impl Payments {
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
