//! Outbox rows the relay parked because they cannot be published as they are (see the
//! relay): listed for an operator, and put back in line once the cause is fixed (a schema
//! registered, a record trimmed).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// A parked outbox row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ParkedRow {
    pub id: i64,
    pub event_id: Uuid,
    pub topic: String,
    pub record_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub parked_at: DateTime<Utc>,
    pub reason: String,
}

/// Every parked row, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<ParkedRow>> {
    Ok(sqlx::query_as(
        "select id, event_id, topic, record_name, created_at, parked_at,
                coalesce(parked_reason, '') as reason
           from outbox where parked_at is not null
          order by id",
    )
    .fetch_all(pool)
    .await?)
}

/// Puts parked rows (`ids`, or all of them) back in line for the relay; returns how many.
pub async fn unpark(pool: &PgPool, ids: Option<&[i64]>) -> Result<u64> {
    let done = sqlx::query(
        "with unparked as (
             update outbox set parked_at = null, parked_reason = null
              where parked_at is not null and ($1::bigint[] is null or id = any($1))
             returning id)
         insert into outbox_pending (id) select id from unparked",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
