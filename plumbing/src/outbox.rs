//! Writes to the outbox table, inside the caller's transaction: the one table this crate
//! knows. The relay in `connectors` publishes what is written here.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dhanman_schemas::Catalog;
use dhanman_schemas::events::Record;
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres};
use uuid::Uuid;

use crate::Result;

/// Queues a record for the relay. The outbox row's id orders publication.
pub async fn enqueue<R: Record>(conn: &mut PgConnection, record: &R) -> Result<Uuid> {
    enqueue_many(conn, std::slice::from_ref(record)).await?;
    Ok(record.envelope().event_id)
}

/// Queues records for the relay in one statement, in their order.
pub async fn enqueue_many<R: Record>(conn: &mut PgConnection, records: &[R]) -> Result<()> {
    let rows = records.iter().map(row).collect::<Result<Vec<_>>>()?;
    enqueue_rows(conn, &rows).await
}

/// A record as its outbox row will hold it; [`enqueue_rows`] writes rows of different
/// record types in one statement.
pub struct Row {
    event_id: Uuid,
    topic: &'static str,
    key: String,
    name: &'static str,
    version: i32,
    /// The record: its JSON as text (the column is `json`, kept as written), or its Avro
    /// datum ([`avro_row`]).
    record: Body,
    /// The headers' JSON as text.
    headers: String,
    derived_from: Option<Uuid>,
}

/// The form a row keeps its record in.
enum Body {
    Json(String),
    Avro(Vec<u8>),
}

impl Row {
    /// The record's JSON text, if the row carries its record as JSON.
    pub fn payload(&self) -> Option<&str> {
        match &self.record {
            Body::Json(text) => Some(text),
            Body::Avro(_) => None,
        }
    }

    fn avro(&self) -> Option<&[u8]> {
        match &self.record {
            Body::Avro(datum) => Some(datum),
            Body::Json(_) => None,
        }
    }

    /// The same row, naming the row its record announces (`outbox.derived_from`: the ledger's
    /// announcement of a journal entry names the entry).
    pub fn announcing(self, source: Uuid) -> Row {
        Row {
            derived_from: Some(source),
            ..self
        }
    }

    /// The row as one line of `COPY outbox (`[`COPY_COLUMNS`]`) from stdin` text: the
    /// benchmarks copy the rows the pipeline writes to measure what Postgres alone takes
    /// to store them.
    pub fn copy_line(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{}\t{}\t", self.event_id, self.topic);
        copy_escape(out, &self.key);
        let _ = write!(out, "\t{}\t{}\t", self.name, self.version);
        match self.payload() {
            Some(json) => copy_escape(out, json),
            None => out.push_str("\\N"),
        }
        out.push('\t');
        copy_escape(out, &self.headers);
        out.push('\t');
        match self.derived_from {
            Some(source) => {
                let _ = write!(out, "{source}");
            }
            None => out.push_str("\\N"),
        }
        out.push('\t');
        match self.avro() {
            // bytea's hex form, its backslash escaped for COPY.
            Some(datum) => {
                out.push_str("\\\\x");
                for byte in datum {
                    let _ = write!(out, "{byte:02x}");
                }
            }
            None => out.push_str("\\N"),
        }
        out.push('\n');
    }
}

/// The columns of [`Row::copy_line`], in its order.
pub const COPY_COLUMNS: &str = "event_id, topic, message_key, record_name, schema_version, payload, headers, derived_from, avro";

/// `value` as a column of `COPY ... from stdin` text: backslash, tab, newline and carriage
/// return escaped.
fn copy_escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Headers every published record carries, so that consumers and operators can follow a
/// piece of work without decoding the payload: its correlation id and the trace it
/// continues (`traceparent`), written as a JSON object, and its `event_id` and
/// `record_name`, which the relay adds from the row's own columns ([`published_headers`])
/// rather than have every row spell them twice.
#[derive(Serialize)]
struct Headers<'a> {
    correlation_id: &'a str,
    traceparent: String,
}

/// The row `record` becomes: its JSON, and headers carrying its correlation id and the
/// trace it continues (a new one when it continues none).
pub fn row<R: Record>(record: &R) -> Result<Row> {
    row_with(record, Body::Json(json_text(record, 1024)?))
}

/// Like [`row`], keeping the record as its Avro datum under the schema version it is written
/// with: about half the bytes of its JSON, and nothing left to encode when it is published.
/// The relay frames it as it is. For a record read from the outbox by nothing but the relay
/// (the ledger's announcements); a record with a `date` field is refused.
pub fn avro_row<R: Record>(record: &R) -> Result<Row> {
    use serde::ser::Error as _;
    let datum = Catalog::global()
        .datum(record)
        .map_err(serde_json::Error::custom)?;
    row_with(record, Body::Avro(datum))
}

fn row_with<R: Record>(record: &R, body: Body) -> Result<Row> {
    let envelope = record.envelope();
    let headers = Headers {
        correlation_id: &envelope.correlation_id,
        traceparent: crate::trace::for_outbox(envelope.causation_id.as_deref()).to_string(),
    };
    Ok(Row {
        event_id: envelope.event_id,
        topic: R::TOPIC,
        key: record.key(),
        name: R::NAME,
        version: R::WRITE_VERSION as i32,
        record: body,
        headers: json_text(&headers, 128)?,
        derived_from: None,
    })
}

/// `value` as JSON text, written into `room` bytes set aside for it: `serde_json::to_string`
/// starts from 128 and grows by copying, several times for a ledger announcement, on every
/// row a batch writes.
fn json_text<T: Serialize + ?Sized>(value: &T, room: usize) -> Result<String> {
    let mut text = Vec::with_capacity(room);
    serde_json::to_writer(&mut text, value)?;
    // serde_json writes UTF-8; the fallback only keeps this free of a panic.
    Ok(String::from_utf8(text)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Queues rows for the relay in one statement, in their order.
pub async fn enqueue_rows(conn: &mut PgConnection, rows: &[Row]) -> Result<()> {
    static ENQUEUE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| insert_rows(1, "true"));
    let query = sqlx::query(AssertSqlSafe(ENQUEUE.as_str()));
    bind_all(query, rows).execute(conn).await?;
    Ok(())
}

/// The statement (or the data-modifying `WITH` part) that queues rows bound by [`bind_all`]
/// as its parameters `$first` to `$first + 8`, those with `condition` on `u.d` (the row's
/// `derived_from`) and the others of `u`, in their order.
pub fn insert_rows(first: usize, condition: &str) -> String {
    let [id, t, k, r, v, p, h, d, a] = std::array::from_fn(|i| first + i);
    format!(
        "insert into outbox (event_id, topic, message_key, record_name, schema_version, payload, headers,
                             derived_from, avro)
         select id, t, k, r, v, p, h, d, a
           from unnest(${id}::uuid[], ${t}::text[], ${k}::text[], ${r}::text[], ${v}::int[],
                       ${p}::json[], ${h}::json[], ${d}::uuid[], ${a}::bytea[]) with ordinality
                as u(id, t, k, r, v, p, h, d, a, n)
          where {condition}
          order by n"
    )
}

/// Binds `rows` as the next nine parameters of [`insert_rows`].
pub fn bind_all<'q, 'r: 'q>(
    query: Query<'q, Postgres, PgArguments>,
    rows: &'r [Row],
) -> Query<'q, Postgres, PgArguments> {
    bind_rows(query, rows.iter())
        .bind(rows.iter().map(|r| r.derived_from).collect::<Vec<_>>())
        .bind(rows.iter().map(Row::avro).collect::<Vec<_>>())
}

/// Binds `rows` as the next seven parameters, arrays of: event ids (`uuid[]`), topics,
/// message keys, record names (`text[]`), schema versions (`int[]`), payloads and headers
/// (JSON as `text[]`: cast them `::json[]`); for a statement that queues rows of [`row`]
/// along with other writes (the payload of an [`avro_row`] binds as null, which the
/// outbox's check refuses).
pub fn bind_rows<'q, 'r: 'q>(
    query: Query<'q, Postgres, PgArguments>,
    rows: impl Iterator<Item = &'r Row> + Clone,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(rows.clone().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.clone().map(|r| r.topic).collect::<Vec<_>>())
        .bind(rows.clone().map(|r| r.key.as_str()).collect::<Vec<_>>())
        .bind(rows.clone().map(|r| r.name).collect::<Vec<_>>())
        .bind(rows.clone().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.clone().map(Row::payload).collect::<Vec<_>>())
        .bind(rows.map(|r| r.headers.as_str()).collect::<Vec<_>>())
}

/// Bytes as Postgres can hold them in `text` and `json`: UTF-8, with invalid sequences and
/// NUL (which neither type accepts) each replaced by U+FFFD.
pub fn postgres_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

/// The field of a header value kept as base64 ([`header_value`]).
const BASE64: &str = "base64";

/// A Kafka header's value as an outbox row's `headers` keep it: the text itself when the
/// bytes are text Postgres can hold (UTF-8 without NUL), else `{"base64": "..."}`. The relay
/// publishes the same bytes either way ([`header_bytes`]).
pub fn header_value(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Json::String(text.to_string()),
        _ => serde_json::json!({ BASE64: STANDARD.encode(bytes) }),
    }
}

/// The bytes an outbox row's header value stands for ([`header_value`]); any other JSON
/// value, its JSON text.
pub fn header_bytes(value: &Json) -> Cow<'_, [u8]> {
    match value {
        Json::String(text) => Cow::Borrowed(text.as_bytes()),
        Json::Object(object) if object.len() == 1 => {
            match object
                .get(BASE64)
                .and_then(Json::as_str)
                .map(|b| STANDARD.decode(b))
            {
                Some(Ok(bytes)) => Cow::Owned(bytes),
                _ => Cow::Owned(value.to_string().into_bytes()),
            }
        }
        other => Cow::Owned(other.to_string().into_bytes()),
    }
}

/// The headers a row is published with, in order: for a record row (`ids`: its event id and
/// record name, from its columns) `correlation_id`, `event_id`, `record_name`, then the rest
/// of the row's `headers` (a row written before the ids left its `headers` may hold them
/// too: they are published once, from the columns); for a forwarded record, its `headers`
/// as they are.
pub fn published_headers<'h>(
    headers: &'h Json,
    ids: Option<(Uuid, &str)>,
) -> Vec<(&'h str, Cow<'h, [u8]>)> {
    const CORRELATION: &str = "correlation_id";
    let map = headers.as_object();
    let stored = map.into_iter().flatten();
    let Some((event_id, record_name)) = ids else {
        return stored.map(|(k, v)| (k.as_str(), header_bytes(v))).collect();
    };
    let mut out = Vec::with_capacity(map.map_or(0, |m| m.len()) + 2);
    if let Some(v) = map.and_then(|m| m.get(CORRELATION)) {
        out.push((CORRELATION, header_bytes(v)));
    }
    out.push(("event_id", Cow::Owned(event_id.to_string().into_bytes())));
    out.push(("record_name", Cow::Owned(record_name.as_bytes().to_vec())));
    out.extend(
        stored
            .filter(|(k, _)| !matches!(k.as_str(), CORRELATION | "event_id" | "record_name"))
            .map(|(k, v)| (k.as_str(), header_bytes(v))),
    );
    out
}

/// A record forwarded byte for byte (a dead letter, a redrive), with its own headers
/// (values as [`header_value`] writes them).
pub struct RawRecord<'a> {
    pub id: Uuid,
    pub topic: &'a str,
    /// Its text ([`postgres_text`]) is the row's `message_key`; bytes that text does not
    /// give back are kept as they are too (`raw_key`), and published.
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Json,
}

pub async fn enqueue_raw(
    conn: &mut PgConnection,
    record: RawRecord<'_>,
) -> std::result::Result<(), sqlx::Error> {
    let text = record.key.map(postgres_text);
    let raw_key = record
        .key
        .filter(|key| text.as_deref().map(str::as_bytes) != Some(*key));
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, raw_key, raw_value, headers)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(record.id)
    .bind(record.topic)
    .bind(text)
    .bind(raw_key)
    .bind(record.value)
    .bind(record.headers)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use dhanman_schemas::events::Envelope;

    use super::*;
    use crate::trace::{HEADER, TraceParent};

    #[derive(Serialize)]
    struct Probe {
        #[serde(flatten)]
        envelope: Envelope,
    }

    impl Record for Probe {
        const NAME: &'static str = "dhanman.test.Probe";
        const TOPIC: &'static str = "dhanman.test";
        fn envelope(&self) -> &Envelope {
            &self.envelope
        }
        fn key(&self) -> String {
            "probe".into()
        }
    }

    /// COPY's text format, read back as Postgres reads it: `\N` is null, and a backslash
    /// takes the next character as `\\`, `\t`, `\n`, `\r` say.
    fn copy_fields(line: &str) -> Vec<Option<String>> {
        let line = line.strip_suffix('\n').expect("one line");
        line.split('\t')
            .map(|field| {
                if field == "\\N" {
                    return None;
                }
                let mut text = String::new();
                let mut chars = field.chars();
                while let Some(c) = chars.next() {
                    text.push(match (c, c == '\\') {
                        (_, true) => match chars.next() {
                            Some('t') => '\t',
                            Some('n') => '\n',
                            Some('r') => '\r',
                            Some(other) => other,
                            None => '\\',
                        },
                        (c, false) => c,
                    });
                }
                Some(text)
            })
            .collect()
    }

    #[test]
    fn a_rows_copy_line_holds_its_columns_with_tabs_newlines_and_backslashes_escaped() {
        let probe = Probe {
            envelope: Envelope::new(Uuid::now_v7(), "tab\there\nnewline\\slash\r", None),
        };
        let json = row(&probe).unwrap();
        let mut line = String::new();
        json.copy_line(&mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        let fields = copy_fields(&line);
        assert_eq!(fields.len(), COPY_COLUMNS.split(", ").count(), "{line:?}");
        let id = probe.envelope.event_id.to_string();
        assert_eq!(fields[0].as_deref(), Some(id.as_str()));
        assert_eq!(fields[1].as_deref(), Some("dhanman.test"));
        assert_eq!(fields[2].as_deref(), Some("probe"));
        assert_eq!(fields[3].as_deref(), Some("dhanman.test.Probe"));
        assert_eq!(fields[5].as_deref(), json.payload());
        assert_eq!(fields[6].as_deref(), Some(json.headers.as_str()));
        assert_eq!((&fields[7], &fields[8]), (&None, &None));
        // The JSON itself escapes the correlation id's controls, and COPY its backslashes.
        let payload: Json = serde_json::from_str(fields[5].as_deref().unwrap()).unwrap();
        assert_eq!(payload["correlation_id"], "tab\there\nnewline\\slash\r");

        let source = Uuid::now_v7();
        let announcement = row_with(&probe, Body::Avro(vec![0x00, 0x5c, 0xff]))
            .unwrap()
            .announcing(source);
        let mut line = String::new();
        announcement.copy_line(&mut line);
        let fields = copy_fields(&line);
        assert_eq!(fields[5], None);
        assert_eq!(fields[7], Some(source.to_string()));
        assert_eq!(fields[8].as_deref(), Some("\\x005cff"));
    }

    #[test]
    fn text_for_postgres_has_no_nul_and_no_invalid_utf8() {
        assert_eq!(postgres_text(b"plain"), "plain");
        assert_eq!(postgres_text(b"a\0b\xffc"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn header_values_keep_their_bytes_and_text_stays_readable() {
        for bytes in [&b""[..], b"plain", b"a\0b", b"\xff\xfe", "ünï".as_bytes()] {
            let kept = header_value(bytes);
            // What the row holds is JSON Postgres accepts: no NUL anywhere in its text.
            assert!(!kept.to_string().contains("\\u0000"), "{kept}");
            assert_eq!(header_bytes(&kept).as_ref(), bytes, "{kept}");
        }
        assert_eq!(header_value(b"plain"), Json::String("plain".into()));
        assert_eq!(
            header_value(b"a\0b"),
            serde_json::json!({ "base64": "YQBi" })
        );
        // Values only a hand could write are published as their JSON text.
        for other in [
            serde_json::json!(7),
            serde_json::json!({ "base64": "not base64!" }),
        ] {
            assert_eq!(header_bytes(&other).as_ref(), other.to_string().as_bytes());
        }
    }

    #[test]
    fn a_rows_headers_hold_its_correlation_and_a_trace_and_are_published_with_its_ids() {
        let probe = Probe {
            envelope: Envelope::new(Uuid::now_v7(), "corr-1", None),
        };
        let row = row(&probe).unwrap();
        let headers: Json = serde_json::from_str(&row.headers).unwrap();
        assert_eq!(headers.as_object().map(|m| m.len()), Some(2), "{headers}");
        assert_eq!(headers["correlation_id"], "corr-1");
        let trace = headers[HEADER].as_str().unwrap();
        assert!(TraceParent::parse(trace).is_some(), "{trace}");

        let id = probe.envelope.event_id;
        let text = |published: Vec<(&str, Cow<[u8]>)>| -> Vec<(String, String)> {
            published
                .into_iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(&v).into_owned()))
                .collect()
        };
        let published = text(published_headers(&headers, Some((id, row.name))));
        let expected = vec![
            ("correlation_id".to_string(), "corr-1".to_string()),
            ("event_id".to_string(), id.to_string()),
            ("record_name".to_string(), "dhanman.test.Probe".to_string()),
            (HEADER.to_string(), trace.to_string()),
        ];
        assert_eq!(published, expected);
        // A row of the earlier form spelled the ids in its headers too: published once.
        let mut earlier = headers.clone();
        earlier["event_id"] = Json::String(id.to_string());
        earlier["record_name"] = Json::String(row.name.to_string());
        assert_eq!(
            text(published_headers(&earlier, Some((id, row.name)))),
            expected
        );
        // A forwarded record's headers are its own, as they are.
        let forwarded = serde_json::json!({"dlq.error": "bad", "record_name": "x"});
        assert_eq!(
            text(published_headers(&forwarded, None)),
            vec![
                ("dlq.error".to_string(), "bad".to_string()),
                ("record_name".to_string(), "x".to_string()),
            ]
        );
    }
}
