//! Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) through
//! `schema_registry_converter`: it talks to the registry (registration, schema by id, its
//! caches) and decodes with the writer's schema; this module adds what it does not do:
//! several versions of one record written by one process (its encoder caches one schema per
//! subject), resolution of every writer version to our newest reader schema, and the way to
//! our Rust types: straight from the datum when the writer's schema is the reader's
//! ([`crate::typed::datum`]), through the JSON form when the value is resolved from another.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;

use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::avro_common::DecodeResultWithSchema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::Value as Json;

use crate::events::{Event, Record};
use crate::{Catalog, Error, RecordSchema, Result, json};

/// A record read off a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Full Avro name of the record.
    pub name: String,
    /// The registry id of the writer's schema.
    pub schema_id: u32,
    /// The record as our newest local schema sees it.
    pub json: Json,
}

pub struct Codec {
    settings: SrSettings,
    /// The registry's base URL, and the client and credentials for the look-ups the
    /// converter does not offer.
    base: String,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    decoder: AvroDecoder,
    ids: Mutex<HashMap<(String, u32), u32>>,
    /// Per (writer schema id, reader version): whether the writer's schema is the reader's
    /// exactly, so that reading needs no resolution.
    same_schema: Mutex<HashMap<(u32, u32), bool>>,
    /// Writer schema ids whose records [`Codec::decode_event`] reads straight from their
    /// datum: the writer's schema is the reader's and [`crate::typed::readable`]. Only ids
    /// the registry answered for are kept, so the map is as large as the registry's records.
    direct: Mutex<HashMap<u32, (String, &'static RecordSchema)>>,
    topic_prefix: String,
    /// Records read with an older local version than the newest (see [`Codec::pin_reader`]).
    pinned: HashMap<String, u32>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

fn registry_error(e: SRCError) -> Error {
    let text = e.to_string();
    let network = e
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .is_some_and(|r| r.is_connect() || r.is_timeout() || r.is_request());
    if e.retriable || network || text.contains("status 5") {
        Error::RegistryUnavailable(text)
    } else {
        Error::Undecodable(text)
    }
}

/// The most memory decoding one record may ask for. Kafka's own limit on a record is about
/// 1 MiB; a forged block count in a small record asking for gigabytes is refused instead
/// of reserved. Set for the process when the first codec is made.
pub const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

/// A registry user's name and secret, sent as HTTP basic auth (Confluent's
/// `basic.auth.user.info`).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
}

impl Credentials {
    /// `user:secret`, as `SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO` holds it.
    pub fn parse(user_info: &str) -> Result<Self> {
        match user_info.split_once(':') {
            Some((user, secret)) if !user.is_empty() => Ok(Credentials {
                user: user.to_string(),
                secret: secret.to_string(),
            }),
            _ => Err(Error::Invalid(
                "registry credentials must be user:secret (basic.auth.user.info)".into(),
            )),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

impl Codec {
    /// `url` is the registry's base URL (for the embedded one,
    /// `http://<api address>/schema-registry`); reads only, registering nothing new.
    pub fn new(url: &str) -> Result<Self> {
        Self::connect(url, None)
    }

    /// A codec that registers the local schemas it does not find in the registry, as
    /// `credentials` (registrations need them; look-ups and reads do not).
    pub fn connect(url: &str, credentials: Option<Credentials>) -> Result<Self> {
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
        let base = url.trim_end_matches('/').to_string();
        let mut builder = SrSettings::new_builder(base.clone());
        builder
            .no_proxy()
            .set_timeout(std::time::Duration::from_secs(10));
        if let Some(c) = &credentials {
            builder.set_basic_authorization(&c.user, Some(&c.secret));
        }
        let settings = builder
            .build()
            .map_err(|e| Error::RegistryUnavailable(e.to_string()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::RegistryUnavailable(e.to_string()))?;
        Ok(Codec {
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            base,
            http,
            credentials,
            ids: Mutex::new(HashMap::new()),
            same_schema: Mutex::new(HashMap::new()),
            direct: Mutex::new(HashMap::new()),
            topic_prefix: String::new(),
            pinned: HashMap::new(),
        })
    }

    /// Reads record `name` with local version `version` instead of the newest: a consumer
    /// built against that version of the contract.
    pub fn pin_reader(mut self, name: &str, version: u32) -> Result<Self> {
        if Catalog::global().get(name, version).is_none() {
            return Err(Error::Invalid(format!("no local schema {name} v{version}")));
        }
        self.pinned.insert(name.to_string(), version);
        Ok(self)
    }

    /// Topics are named `<prefix><logical name>`; subjects follow the real topic name
    /// (TopicRecordNameStrategy), as every Confluent client names them.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Self {
        self.topic_prefix = prefix.to_string();
        self
    }

    /// The subject a local schema is registered under: `<real topic>-<record full name>`.
    pub fn subject(&self, record: &RecordSchema) -> String {
        crate::topics::subject(
            &format!("{}{}", self.topic_prefix, record.topic),
            &record.name,
        )
    }

    /// The registry id of one local schema version: looked up (a read), else registered
    /// when the codec has credentials. A registry that refuses the registration (no or
    /// wrong credentials) is reported as unavailable: the caller retries, and the record
    /// goes out once the schema is registered (`dhanman schemas register`) or the
    /// credentials are right.
    pub async fn schema_id(&self, record: &RecordSchema) -> Result<u32> {
        let key = (record.name.clone(), record.version);
        if let Some(id) = self.ids.lock().expect("id cache lock").get(&key) {
            return Ok(*id);
        }
        let found = match self.lookup(record).await? {
            Some(id) => id,
            None => self.register(record).await?,
        };
        self.ids.lock().expect("id cache lock").insert(key, found);
        Ok(found)
    }

    /// `POST /subjects/{subject}` with the schema: its id if the subject has it.
    async fn lookup(&self, record: &RecordSchema) -> Result<Option<u32>> {
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| Error::RegistryUnavailable(format!("registry URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| Error::RegistryUnavailable("registry URL cannot be a base".into()))?
            .pop_if_empty()
            .extend(["subjects", &self.subject(record)]);
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({"schema": record.text}));
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.user, Some(&c.secret));
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::RegistryUnavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_server_error() {
            return Err(Error::RegistryUnavailable(format!(
                "schema look-up: {status}"
            )));
        }
        let body: Json = response
            .json()
            .await
            .map_err(|e| Error::RegistryUnavailable(e.without_url().to_string()))?;
        match body.get("id").and_then(Json::as_u64) {
            Some(id) if status.is_success() => u32::try_from(id)
                .map(Some)
                .map_err(|_| Error::Undecodable(format!("registry id {id} is out of range"))),
            _ => Err(Error::RegistryUnavailable(format!(
                "schema look-up: {status} {body}"
            ))),
        }
    }

    async fn register(&self, record: &RecordSchema) -> Result<u32> {
        let supplied = SuppliedSchema::new(
            Some(record.name.clone()),
            SchemaType::Avro,
            record.text.to_string(),
        );
        let registered = post_schema(&self.settings, self.subject(record), supplied)
            .await
            .map_err(|e| {
                let unauthorized = e.to_string().contains("40101")
                    || e.to_string().contains("status 401")
                    || e.to_string().contains("status 403");
                match registry_error(e) {
                    Error::Undecodable(m) if unauthorized => Error::RegistryUnavailable(format!(
                        "{} v{} is not registered under {}, and the registry refuses to \
                         register it with {}: {m}",
                        record.name,
                        record.version,
                        self.subject(record),
                        if self.credentials.is_some() {
                            "these credentials"
                        } else {
                            "no credentials (SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO)"
                        }
                    )),
                    Error::Undecodable(m) => Error::Schema {
                        name: record.name.clone(),
                        reason: format!("registry refused version {}: {m}", record.version),
                    },
                    other => other,
                }
            })?;
        Ok(registered.id)
    }

    /// Encodes the JSON form of a record with one local schema version.
    pub async fn encode_json(&self, name: &str, version: u32, value: &Json) -> Result<Vec<u8>> {
        let record = Catalog::global().local(name, version)?;
        encode_with_id(record, self.schema_id(record).await?, value)
    }

    /// Frames a datum of one local schema version ([`RecordSchema::datum`]) in the Confluent
    /// wire format, under the registry's id for that version.
    pub async fn frame(&self, name: &str, version: u32, datum: &[u8]) -> Result<Vec<u8>> {
        Ok(with_header(
            self.schema_id(Catalog::global().local(name, version)?)
                .await?,
            datum,
        ))
    }

    pub async fn encode<R: Record>(&self, record: &R) -> Result<Vec<u8>> {
        let value = serde_json::to_value(record).map_err(|e| Error::Invalid(e.to_string()))?;
        self.encode_json(R::NAME, R::WRITE_VERSION, &value).await
    }

    /// Decodes a Confluent-framed Avro record and resolves it to our newest schema of its
    /// name (or the pinned one), so v1 and v2 writers read alike.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded> {
        self.decode_as(bytes, None).await
    }

    /// Like [`Codec::decode`], reading with local version `reader_version` of the record's
    /// schema instead of the newest or pinned one (`None`): what a consumer built against
    /// that version sees.
    pub async fn decode_as(&self, bytes: &[u8], reader_version: Option<u32>) -> Result<Decoded> {
        let read = self.read(bytes, reader_version, None).await?;
        let json = if read.same {
            // Written with the reader's own schema: resolution would give back what was written.
            json::from_avro(&read.written.value, &read.reader.schema, "")
        } else {
            resolve(
                &read.written.value,
                &read.written.schema.parsed,
                &read.reader.schema,
            )
        }
        .map_err(|e| read.unreadable(e))?;
        Ok(Decoded {
            name: read.name,
            schema_id: read.schema_id,
            json,
        })
    }

    /// A Confluent-framed Avro record as the event it is, resolved to our newest (or pinned)
    /// schema of its name and validated: what [`Event::from_json`] makes of
    /// [`Codec::decode`]'s JSON, read without that JSON when the writer's schema is the
    /// reader's. [`Error::Invalid`] is a record its type refuses; [`Error::Undecodable`]
    /// one that is not a record we can read.
    pub async fn decode_event(&self, bytes: &[u8]) -> Result<Event> {
        let schema_id = wire_schema_id(bytes)?;
        let direct = self
            .direct
            .lock()
            .expect("direct reads lock")
            .get(&schema_id)
            .cloned();
        if let Some((name, reader)) = direct {
            return read_direct(&name, reader, bytes);
        }
        // The writer's schema first, without the datum: when it is the reader's, every
        // record of it, the first too, is read straight from its datum, one way (apache-avro's
        // reader takes a datum cut short in a string or before a union's index for nulls;
        // this refuses it).
        let writer = self
            .decoder
            .get_schema(schema_id)
            .await
            .map_err(|e| self.registry_failure(e))?;
        let (name, reader, same) = self.reading(schema_id, &writer.parsed, None)?;
        if same && crate::typed::readable(&reader.schema) {
            self.direct
                .lock()
                .expect("direct reads lock")
                .insert(schema_id, (name.clone(), reader));
            return read_direct(&name, reader, bytes);
        }
        let read = self.read(bytes, None, Some((name, reader, same))).await?;
        if !read.same {
            let json = resolve(
                &read.written.value,
                &read.written.schema.parsed,
                &read.reader.schema,
            )
            .map_err(|e| read.unreadable(e))?;
            return Event::from_json(&read.name, json);
        }
        Event::from_avro(&read.name, &read.written.value, &read.reader.schema).map_err(
            |e| match e {
                Error::Undecodable(message) => read.unreadable(Error::Invalid(message)),
                other => other,
            },
        )
    }

    /// What every read through apache-avro's value starts with: the value as written (the
    /// writer's schema from the registry) and the local schema to read it with ([`Codec::reading`],
    /// unless the caller has it already: `known`).
    async fn read(
        &self,
        bytes: &[u8],
        reader_version: Option<u32>,
        known: Option<(String, &'static RecordSchema, bool)>,
    ) -> Result<Read> {
        let schema_id = wire_schema_id(bytes)?;
        let written = self
            .decoder
            .decode_with_schema(Some(bytes))
            .await
            .map_err(|e| self.registry_failure(e))?
            .ok_or_else(|| Error::Undecodable("empty payload".into()))?;
        let (name, reader, same) = match known {
            Some(known) => known,
            None => self.reading(schema_id, &written.schema.parsed, reader_version)?,
        };
        Ok(Read {
            name,
            schema_id,
            written,
            reader,
            same,
        })
    }

    /// A failed look-up or read through the converter, as our error. The converter keeps
    /// failed look-ups, every one, for ever: a registry that was down must be asked again
    /// next time, and records naming ids the registry never had (any of four billion) must
    /// not grow the process. The price is one look-up per such record; known schemas stay
    /// cached.
    fn registry_failure(&self, e: SRCError) -> Error {
        self.decoder.remove_errors_from_cache();
        registry_error(e)
    }

    /// For writer schema `schema_id`: the full name of its record, the local schema to read
    /// it with (`reader_version`, else the pinned one, else the newest), and whether the
    /// writer's schema is that one exactly.
    fn reading(
        &self,
        schema_id: u32,
        writer: &apache_avro::Schema,
        reader_version: Option<u32>,
    ) -> Result<(String, &'static RecordSchema, bool)> {
        let name = match writer {
            apache_avro::Schema::Record(record) => record.name.fullname(None),
            _ => {
                return Err(Error::Undecodable(
                    "writer schema is not a named record".into(),
                ));
            }
        };
        let catalog = Catalog::global();
        let reader = match reader_version.or_else(|| self.pinned.get(&name).copied()) {
            Some(version) => catalog.get(&name, version),
            None => catalog.latest(&name),
        }
        .ok_or_else(|| Error::Undecodable(format!("no local schema for record {name}")))?;
        let same = *self
            .same_schema
            .lock()
            .expect("schema cache lock")
            .entry((schema_id, reader.version))
            .or_insert_with(|| identical(writer, &reader.schema));
        Ok((name, reader, same))
    }
}

/// A record's value as its writer wrote it, and our schema to read it with.
struct Read {
    name: String,
    schema_id: u32,
    written: DecodeResultWithSchema,
    reader: &'static RecordSchema,
    /// Whether the writer's schema is the reader's in every attribute.
    same: bool,
}

impl Read {
    /// `error`, converting the value, as the reason the record is undecodable.
    fn unreadable(&self, error: Error) -> Error {
        unreadable(&self.name, self.reader.version, error)
    }
}

/// A framed record written with `reader`'s own schema, read straight from its datum.
fn read_direct(name: &str, reader: &RecordSchema, bytes: &[u8]) -> Result<Event> {
    Event::from_datum(name, &bytes[5..], &reader.schema).map_err(|e| match e {
        Error::Undecodable(message) => unreadable(name, reader.version, Error::Invalid(message)),
        other => other,
    })
}

/// `error`, converting a record `name` to local version `version`, as the reason the
/// record is undecodable.
fn unreadable(name: &str, version: u32, error: Error) -> Error {
    Error::Undecodable(format!("{name} cannot be read as v{version}: {error}"))
}

/// Reads a value written with `writer` as the `reader` schema sees it: fields matched by
/// name, reader fields the writer lacks take their defaults, writer fields the reader
/// lacks are dropped. Done through the JSON form rather than `Value::resolve`, which in
/// apache-avro 0.22 refuses bytes-backed decimals shorter than their precision's maximum
/// width, i.e. the minimal encoding every Avro writer (ours, Java's, Python's) produces.
pub fn resolve(
    value: &apache_avro::types::Value,
    writer: &apache_avro::Schema,
    reader: &apache_avro::Schema,
) -> Result<Json> {
    let as_written = json::from_avro(value, writer, "")?;
    let as_read = json::to_avro(&as_written, reader, "")?;
    json::from_avro(&as_read, reader, "")
}

/// Whether two schemas are the same in every attribute (names, fields, defaults, logical
/// types), not only in their canonical form, which drops defaults and logical types.
fn identical(a: &apache_avro::Schema, b: &apache_avro::Schema) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Frames an Avro datum in the Confluent wire format.
pub fn encode_with_id(record: &RecordSchema, id: u32, value: &Json) -> Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(256);
    framed.push(0);
    framed.extend_from_slice(&id.to_be_bytes());
    json::write_avro(value, &record.schema, "", &mut framed)?;
    Ok(framed)
}

/// `datum` behind the wire format's header: the magic byte 0 and the registry id.
fn with_header(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(datum.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(datum);
    framed
}

/// The schema id of a framed record, or why the bytes are not one.
pub fn wire_schema_id(bytes: &[u8]) -> Result<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [] => Err(Error::Undecodable("empty payload".into())),
        [magic, ..] if *magic != 0 => Err(Error::Undecodable(format!(
            "unknown magic byte {magic}, expected 0 (Confluent wire format)"
        ))),
        _ => Err(Error::Undecodable(
            "payload shorter than the 5-byte header".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
