//! Dead-letter topics as an operator sees them: the records with the headers the runtime
//! wrote (error, class, source topic/partition/offset, processor, time, attempts), and
//! their redrive to the source topic once the cause is fixed. A redrive goes through the
//! outbox with a `dlq_redrives` row in the same transaction, so each dead letter is
//! redriven once however often the command runs.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dhanman_schemas::topics::dlq_headers;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value as Json};
use sqlx::PgPool;
use uuid::Uuid;

use dhanman_plumbing::outbox;

use crate::kafka::read_to_end;
use crate::{Error, Result};

/// A record of a dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dlq_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    /// The key and the headers as written: a redrive sends them back so; shown as text
    /// (bytes that are not UTF-8 as U+FFFD).
    #[serde(serialize_with = "key_as_text")]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Vec<u8>,
    #[serde(serialize_with = "headers_as_text")]
    pub headers: Vec<(String, Vec<u8>)>,
    /// When it was redriven, if it was.
    pub redriven_at: Option<DateTime<Utc>>,
}

/// A key as text to read.
pub fn key_text(key: Option<&[u8]>) -> Option<Cow<'_, str>> {
    key.map(String::from_utf8_lossy)
}

/// Headers as text to read, by name (the last of a name repeated).
pub fn headers_text(headers: &[(String, Vec<u8>)]) -> BTreeMap<&str, Cow<'_, str>> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v)))
        .collect()
}

fn key_as_text<S: Serializer>(
    key: &Option<Vec<u8>>,
    to: S,
) -> std::result::Result<S::Ok, S::Error> {
    key_text(key.as_deref()).serialize(to)
}

fn headers_as_text<S: Serializer>(
    headers: &[(String, Vec<u8>)],
    to: S,
) -> std::result::Result<S::Ok, S::Error> {
    headers_text(headers).serialize(to)
}

impl DeadLetter {
    /// A header's value when it is text, as the `dlq.*` headers are (the last of a name
    /// repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn class(&self) -> &str {
        self.header(dlq_headers::ERROR_CLASS).unwrap_or("unknown")
    }

    pub fn source_topic(&self) -> Option<&str> {
        self.header(dlq_headers::SOURCE_TOPIC)
    }

    pub fn source_partition(&self) -> Option<i32> {
        self.header(dlq_headers::SOURCE_PARTITION)?.parse().ok()
    }

    pub fn source_offset(&self) -> Option<i64> {
        self.header(dlq_headers::SOURCE_OFFSET)?.parse().ok()
    }
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub error_class: Option<String>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.since
            .is_none_or(|since| letter.timestamp.is_some_and(|t| t >= since))
            && self
                .error_class
                .as_deref()
                .is_none_or(|c| letter.class() == c)
    }
}

/// Every record of `dlq_topic` up to its end now, with whether each was redriven.
pub async fn read(pool: &PgPool, bootstrap: &str, dlq_topic: &str) -> Result<Vec<DeadLetter>> {
    let (bootstrap, topic) = (bootstrap.to_string(), dlq_topic.to_string());
    let mut letters = tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic))
        .await
        .map_err(|e| Error::Broker(format!("DLQ read task failed: {e}")))??;
    let redriven: Vec<(i32, i64, DateTime<Utc>)> = sqlx::query_as(
        "select partition, \"offset\", redriven_at from dlq_redrives where dlq_topic = $1",
    )
    .bind(dlq_topic)
    .fetch_all(pool)
    .await?;
    let redriven: BTreeMap<(i32, i64), DateTime<Utc>> = redriven
        .into_iter()
        .map(|(p, o, at)| ((p, o), at))
        .collect();
    for letter in &mut letters {
        letter.redriven_at = redriven.get(&(letter.partition, letter.offset)).copied();
    }
    Ok(letters)
}

fn read_blocking(bootstrap: &str, topic: &str) -> Result<Vec<DeadLetter>> {
    let (records, _) = read_to_end(bootstrap, topic, &BTreeMap::new())?;
    Ok(records
        .into_iter()
        .map(|r| DeadLetter {
            dlq_topic: topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
            redriven_at: None,
        })
        .collect())
}

/// Sends dead letters back to their source topic through the outbox, each once: a letter
/// already redriven is skipped. Returns how many were sent now. (The outbox names topics
/// without `topic_prefix`; the relay adds it.)
pub async fn redrive(pool: &PgPool, topic_prefix: &str, letters: &[&DeadLetter]) -> Result<usize> {
    let mut sent = 0;
    for letter in letters {
        let Some(source) = letter.source_topic() else {
            continue;
        };
        let mut tx = pool.begin().await?;
        let id = Uuid::now_v7();
        let claimed = sqlx::query(
            "insert into dlq_redrives (dlq_topic, partition, \"offset\", source_topic,
                                       source_partition, source_offset, outbox_event_id)
             values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
        )
        .bind(&letter.dlq_topic)
        .bind(letter.partition)
        .bind(letter.offset)
        .bind(source)
        .bind(letter.source_partition())
        .bind(letter.source_offset())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            continue;
        }
        // Several processors may have dead-lettered the same source record: it goes back
        // once, and each of its dead letters counts as redriven.
        let (copies,): (i64,) = sqlx::query_as(
            "select count(*) from dlq_redrives
              where source_topic = $1 and source_partition = $2 and source_offset = $3",
        )
        .bind(source)
        .bind(letter.source_partition())
        .bind(letter.source_offset())
        .fetch_one(&mut *tx)
        .await?;
        if copies > 1 {
            tx.commit().await?;
            continue;
        }
        // The original headers go back, byte for byte; the DLQ's own are replaced by where
        // it came from.
        let mut headers: Map<String, Json> = letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(dlq_headers::PREFIX))
            .map(|(k, v)| (k.clone(), outbox::header_value(v)))
            .collect();
        headers.insert(
            dlq_headers::REDRIVEN_FROM.to_string(),
            Json::String(format!(
                "{}/{}/{}",
                letter.dlq_topic, letter.partition, letter.offset
            )),
        );
        outbox::enqueue_raw(
            &mut tx,
            outbox::RawRecord {
                id,
                topic: source.strip_prefix(topic_prefix).unwrap_or(source),
                key: letter.key.as_deref(),
                value: &letter.value,
                headers: Json::Object(headers),
            },
        )
        .await?;
        tx.commit().await?;
        sent += 1;
    }
    Ok(sent)
}
