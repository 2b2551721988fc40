//! Read-your-writes: whether a processor has applied an event, read from the gate that
//! each batch's transaction writes with its effects (`applied_events`: the gate rows, and
//! the ledger's entries for the events they gate). A query given a consistency token waits
//! until this says yes.

use sqlx::PgPool;
use uuid::Uuid;

/// Whether `processor` (its [`crate::Processor::name`]) has applied the event `event_id`.
pub async fn has_applied(pool: &PgPool, processor: &str, event_id: Uuid) -> sqlx::Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "select event_id from applied_events where processor = $1 and event_id = $2",
    )
    .bind(processor)
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Which of `event_ids` `processor` has applied, in one look.
pub async fn applied_among(
    pool: &PgPool,
    processor: &str,
    event_ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select event_id from applied_events where processor = $1 and event_id = any($2)",
    )
    .bind(processor)
    .bind(event_ids)
    .fetch_all(pool)
    .await
}
