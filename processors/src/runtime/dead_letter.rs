//! Dead letters: a poison record goes to `<topic>.dlq` through the outbox, in the batch's
//! transaction, with its key, value and headers and the `dlq.*` headers
//! ([`dhanman_schemas::topics::dlq_headers`]) naming the error, its class, its origin, the
//! processor and the attempts. The same source record always yields the same dead letter.

use chrono::Utc;
use dhanman_plumbing::outbox::{header_value, postgres_text};
use dhanman_schemas::topics;
use serde_json::{Value as Json, json};
use sqlx::PgConnection;
use uuid::Uuid;

pub use dhanman_schemas::topics::dlq_headers;

use super::Incoming;
use crate::{Error, Result};

/// The longest error a dead letter names, in bytes: enough for any error of the pipeline's
/// own; a longer one (a decoder quoting a huge value) is cut, saying so.
const MAX_REASON: usize = 4096;

/// `text` cut to at most `max` bytes, on a character boundary, marked when cut.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let end = text.floor_char_boundary(max);
    format!("{} ... ({} bytes cut)", &text[..end], text.len() - end).into()
}

pub(super) struct DeadLetter<'a> {
    pub(super) record: &'a Incoming,
    pub(super) logical_topic: &'a str,
    pub(super) class: &'a str,
    pub(super) reason: &'a str,
    pub(super) attempts: u32,
}

pub(super) async fn dead_letter(
    conn: &mut PgConnection,
    group: &str,
    processor: &str,
    letter: DeadLetter<'_>,
) -> Result<()> {
    use dlq_headers::*;
    let DeadLetter {
        record,
        logical_topic,
        class,
        reason,
        attempts,
    } = letter;
    // The record's key and header values kept byte for byte whatever they hold
    // ([`header_value`], [`dhanman_plumbing::outbox::enqueue_raw`]), the error as text cut to
    // a size: whatever bytes a hostile record carries, its dead letter can be written (else
    // the batch would fail again on every attempt and hold its partition), and it is
    // published as it was read.
    let mut headers = serde_json::Map::new();
    for (k, v) in &record.headers {
        // A name is text already, and holds no NUL: it was read as a C string.
        headers.insert(k.clone(), header_value(v));
    }
    let context = json!({
        ERROR: postgres_text(cut(reason, MAX_REASON).as_bytes()),
        ERROR_CLASS: class,
        SOURCE_TOPIC: record.topic,
        SOURCE_PARTITION: record.partition.to_string(),
        SOURCE_OFFSET: record.offset.to_string(),
        PROCESSOR: processor,
        FAILED_AT: Utc::now().to_rfc3339(),
        ATTEMPTS: attempts.to_string(),
    });
    if let Json::Object(context) = context {
        headers.extend(context);
    }
    // The same source record always yields the same dead letter id, so a re-read after a
    // crash cannot dead-letter it twice.
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!(
            "{group}/{}/{}/{}",
            record.topic, record.partition, record.offset
        )
        .as_bytes(),
    );
    let exists: Option<(i64,)> = sqlx::query_as("select id from outbox where event_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::Database)?;
    if exists.is_some() {
        return Ok(());
    }
    dhanman_plumbing::outbox::enqueue_raw(
        conn,
        dhanman_plumbing::outbox::RawRecord {
            id,
            topic: &topics::dlq(logical_topic),
            key: record.key.as_deref(),
            value: record.payload.as_deref().unwrap_or_default(),
            headers: Json::Object(headers),
        },
    )
    .await
    .map_err(Error::Database)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary_saying_how_much() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(3000); // 6000 bytes
        let cut = cut(&long, MAX_REASON);
        assert!(cut.starts_with(&"é".repeat(2048)), "{cut}");
        assert!(cut.ends_with(" ... (1904 bytes cut)"), "{cut}");
    }
}
