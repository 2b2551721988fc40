//! Retention: the tables that would otherwise grow forever, pruned in small batches.
//!
//! - `outbox`: rows published (no longer queued, not parked) and written more than
//!   `outbox` ago. The relay never reads a published row again; the records are on their
//!   topics.
//! - `idempotency_keys`: keys stored more than `idempotency` ago. A retry with such a key
//!   is a new command: the retry window of a client is this retention.
//! - `processed_events` (the gate): rows older than `gate` whose group has stored offsets
//!   past them on their partition. Such an event comes back only by a replay or an
//!   offsets reset over that old range; the ledger skips it anyway (its entry's key is the
//!   event id), the users projection and the reminders' timers are upserts, the notifier's
//!   delivery log is keyed by event and recipient, so nothing is posted or sent twice; the
//!   approval processor would ask for approvals again. A consistency token older than the
//!   gate's retention counts as applied (its event is long past).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// How long each table keeps what it no longer needs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub outbox: Duration,
    pub idempotency: Duration,
    pub gate: Duration,
}

/// Rows one statement deletes at most: short transactions, short locks.
const BATCH: i64 = 5_000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub outbox: u64,
    pub idempotency_keys: u64,
    pub processed_events: u64,
}

fn cutoff(keep: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
}

/// The smallest time-ordered (v7) id of the millisecond `at`: every event id made before
/// `at` is below it.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// When a time-ordered (v7) id was made; `None` for ids of other versions.
pub fn made_at(id: Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// Deletes in batches until a batch finds nothing more.
async fn drain(pool: &PgPool, sql: &str, bind: impl Fn() -> Vec<Bound> + Send) -> Result<u64> {
    let mut total = 0;
    loop {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
        for b in bind() {
            query = match b {
                Bound::Time(t) => query.bind(t),
                Bound::Id(id) => query.bind(id),
                Bound::Text(s) => query.bind(s),
            };
        }
        let done = query.bind(BATCH).execute(pool).await?.rows_affected();
        total += done;
        if done < BATCH as u64 {
            return Ok(total);
        }
    }
}

enum Bound {
    Time(DateTime<Utc>),
    Id(Uuid),
    Text(String),
}

/// One pass over every table. `groups` maps a processor to its consumer group (the gate
/// rows of a processor are pruned only behind its group's stored offsets).
pub async fn prune(
    pool: &PgPool,
    retention: Retention,
    groups: &[(String, String)],
) -> Result<Pruned> {
    let outbox_before = cutoff(retention.outbox);
    let outbox = drain(
        pool,
        "delete from outbox where id in (
            select id from outbox o
             where created_at < $1 and parked_at is null
               and not exists (select from outbox_pending p where p.id = o.id)
             order by id limit $2)",
        || vec![Bound::Time(outbox_before)],
    )
    .await?;
    let keys_before = cutoff(retention.idempotency);
    let idempotency_keys = drain(
        pool,
        "delete from idempotency_keys where ctid in (
            select ctid from idempotency_keys where created_at < $1 limit $2)",
        || vec![Bound::Time(keys_before)],
    )
    .await?;
    let gate_before = cutoff(retention.gate);
    let mut processed_events = 0;
    for (processor, group) in groups {
        processed_events += drain(
            pool,
            r#"delete from processed_events where ctid in (
                select p.ctid from processed_events p
                  join consumer_offsets o
                    on o.group_id = $4 and o.topic = p.topic and o.partition = p.partition
                 where p.processor = $3 and p.event_id < $2 and p.processed_at < $1
                   and p."offset" < o.next_offset
                 limit $5)"#,
            || {
                vec![
                    Bound::Time(gate_before),
                    Bound::Id(first_id_at(gate_before)),
                    Bound::Text(processor.clone()),
                    Bound::Text(group.clone()),
                ]
            },
        )
        .await?;
    }
    Ok(Pruned {
        outbox,
        idempotency_keys,
        processed_events,
    })
}

/// Prunes every `every` until the task is dropped; a failed pass is logged and retried at
/// the next.
pub async fn run_periodically(
    pool: PgPool,
    retention: Retention,
    groups: Vec<(String, String)>,
    every: Duration,
) {
    loop {
        match prune(&pool, retention, &groups).await {
            Ok(pruned) if pruned != Pruned::default() => {
                tracing::info!(?pruned, "retention: pruned what is no longer needed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_orders_below_every_id_made_after_it() {
        let at = Utc::now();
        let bound = first_id_at(at);
        assert_eq!(bound.get_version_num(), 7);
        assert_eq!(
            made_at(bound).unwrap().timestamp_millis(),
            at.timestamp_millis()
        );
        let later = Uuid::now_v7();
        assert!(later >= bound, "{later} < {bound}");
        let earlier = first_id_at(at - chrono::Duration::milliseconds(1));
        assert!(earlier < bound);
        assert_eq!(made_at(Uuid::new_v4()), None);
    }
}
