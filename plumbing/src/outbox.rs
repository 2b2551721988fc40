//! Writes to the outbox table, inside the caller's transaction: the one table this crate
//! knows. The relay in `connectors` publishes what is written here.

use dhanman_schemas::events::{Record, record_headers};
use serde_json::Value as Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// Queues a record for the relay. The outbox row's id orders publication.
pub async fn enqueue<R: Record>(conn: &mut PgConnection, record: &R) -> Result<Uuid> {
    enqueue_many(conn, std::slice::from_ref(record)).await?;
    Ok(record.envelope().event_id)
}

/// Queues records for the relay in one statement, in their order.
pub async fn enqueue_many<R: Record>(conn: &mut PgConnection, records: &[R]) -> Result<()> {
    let mut ids = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    let mut payloads = Vec::with_capacity(records.len());
    let mut all_headers = Vec::with_capacity(records.len());
    for record in records {
        let envelope = record.envelope();
        let mut headers = record_headers(R::NAME, envelope.event_id, &envelope.correlation_id);
        crate::trace::add_to_headers(
            &mut headers,
            crate::trace::for_outbox(envelope.causation_id.as_deref()),
        );
        ids.push(envelope.event_id);
        keys.push(record.key());
        payloads.push(serde_json::to_value(record)?);
        all_headers.push(headers);
    }
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, record_name, schema_version, payload, headers)
         select id, $2, k, $3, $4, p, h
           from unnest($1::uuid[], $5::text[], $6::jsonb[], $7::jsonb[]) with ordinality
                as u(id, k, p, h, n)
          order by n",
    )
    .bind(&ids)
    .bind(R::TOPIC)
    .bind(R::NAME)
    .bind(R::WRITE_VERSION as i32)
    .bind(&keys)
    .bind(&payloads)
    .bind(&all_headers)
    .execute(conn)
    .await?;
    Ok(())
}

/// A record forwarded byte for byte (a dead letter), with its own headers.
pub struct RawRecord<'a> {
    pub id: Uuid,
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Json,
}

pub async fn enqueue_raw(
    conn: &mut PgConnection,
    record: RawRecord<'_>,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, raw_value, headers)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(record.id)
    .bind(record.topic)
    .bind(record.key.map(|k| String::from_utf8_lossy(k).into_owned()))
    .bind(record.value)
    .bind(record.headers)
    .execute(conn)
    .await?;
    Ok(())
}
