//! Read-your-writes: a command returns its event id as a consistency token; a query given
//! `?consistent_with=<token>` waits, bounded, until the processor behind the query (the
//! ledger, for most) has applied that event.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{ApiError, AppState};

pub async fn wait_for_ledger(state: &AppState, token: Option<&str>) -> Result<(), ApiError> {
    wait_for(state, "ledger", token).await
}

/// Waits until `processor` has applied the event `token` names.
pub async fn wait_for(
    state: &AppState,
    processor: &str,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let event_id: Uuid = token.parse().map_err(|_| {
        ApiError::validation(
            "consistent_with",
            "must be a consistency token returned by a command",
        )
    })?;
    let deadline = Instant::now() + state.consistency_wait;
    loop {
        if applied(&state.pool, processor, event_id).await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NotYetConsistent(format!(
                "the {processor} processor has not applied event {event_id} within {} ms; retry later",
                state.consistency_wait.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn applied(pool: &PgPool, processor: &str, event_id: Uuid) -> Result<bool, ApiError> {
    let found: Option<(Uuid,)> = sqlx::query_as(
        "select event_id from processed_events where processor = $1 and event_id = $2",
    )
    .bind(processor)
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}
