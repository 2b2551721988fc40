//! Read-your-writes: whether a processor has applied an event, read from the gate
//! (`processed_events`) that each batch's transaction writes with its effects. A query
//! given a consistency token waits until this says yes.

use sqlx::PgPool;
use uuid::Uuid;

/// Whether `processor` (its [`crate::Processor::name`]) has applied the event `event_id`.
pub async fn has_applied(pool: &PgPool, processor: &str, event_id: Uuid) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(
        "select event_id from processed_events where processor = $1 and event_id = $2",
        processor,
        event_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}
