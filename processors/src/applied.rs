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

/// Most event ids a batch's notification names; a batch that applied more names only its
/// processor. (A notification's payload is under 8,000 bytes; an id takes 33.)
pub const NAMED_IN_NOTIFICATION: usize = 200;

/// The payload of the notification a batch's transaction sends (`NOTIFY dhanman_applied`,
/// delivered at its commit): the processor's name and, when they are few enough, the ids
/// of the events the batch applied, so that the API wakes the queries waiting on them
/// without looking them up.
pub fn notification(processor: &str, applied: &[Uuid]) -> String {
    let mut payload = processor.to_string();
    if applied.len() <= NAMED_IN_NOTIFICATION {
        for id in applied {
            payload.push(' ');
            payload.push_str(id.simple().encode_lower(&mut Uuid::encode_buffer()));
        }
    }
    payload
}

/// What a batch's notification says: the processor, and the events it applied, or `None`
/// when they have to be looked up (the notification names none, or names one that is not
/// an event id).
pub fn heard(payload: &str) -> (&str, Option<Vec<Uuid>>) {
    let mut words = payload.split(' ');
    let processor = words.next().unwrap_or_default();
    let ids: Option<Vec<Uuid>> = words.map(|w| Uuid::try_parse(w).ok()).collect();
    (processor, ids.filter(|ids| !ids.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_the_events_of_a_batch_that_fit_and_reads_back_as_sent() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let sent = notification("ledger", &ids);
        assert_eq!(heard(&sent), ("ledger", Some(ids)));
        assert_eq!(heard("reminders"), ("reminders", None), "the name alone");

        let many: Vec<Uuid> = (0..=NAMED_IN_NOTIFICATION)
            .map(|_| Uuid::now_v7())
            .collect();
        assert_eq!(notification("notifier", &many), "notifier");
        let most = notification("notifier", &many[..NAMED_IN_NOTIFICATION]);
        assert!(most.len() < 8000, "{} bytes", most.len());
        assert_eq!(
            heard(&most).1.map(|ids| ids.len()),
            Some(NAMED_IN_NOTIFICATION)
        );

        // Anything else is looked up.
        let id = Uuid::now_v7();
        assert_eq!(heard(&format!("ledger {id} soon")), ("ledger", None));
        assert_eq!(heard(&format!("ledger {id} ")), ("ledger", None));
        assert_eq!(heard(""), ("", None));
    }
}
