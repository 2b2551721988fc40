//! Read-your-writes: whether a processor has applied an event, read from the gate that
//! each batch's transaction writes with its effects (`applied_events`: the gate rows, and
//! the ledger's entries for the events they gate). A query given a consistency token waits
//! until this says yes.

use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// `applied_events` narrowed to `processor`, for a statement's `from`: the event ids it has
/// applied, as `applied (event_id)`, its name written into the statement as a literal.
///
/// With the name a parameter, a plan made for the name keeps only that processor's branches
/// of the view, the plan kept for any name all of them; once the tables have grown, the
/// first can look the cheaper, and Postgres then plans the statement anew at every call (in
/// one run of `bench freshness`, half the balance reads, their planning three times their
/// execution). With the name written in, the plan for any call is the narrow one, and each
/// connection makes it for its first calls only.
pub fn applied_by(processor: &str) -> String {
    format!(
        "(select event_id from applied_events where processor = '{}') applied",
        processor.replace('\'', "''")
    )
}

/// Whether `processor` (its [`crate::Processor::name`]) has applied the event `event_id`.
pub async fn has_applied(pool: &PgPool, processor: &str, event_id: Uuid) -> sqlx::Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "select event_id from {} where event_id = $1",
        applied_by(processor)
    )))
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
    sqlx::query_scalar(AssertSqlSafe(format!(
        "select event_id from {} where event_id = any($1)",
        applied_by(processor)
    )))
    .bind(event_ids)
    .fetch_all(pool)
    .await
}
