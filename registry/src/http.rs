//! Confluent Schema Registry REST API over [`Registry`].

mod extract;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::avro::ParsedSchema;
use crate::compatibility::CompatibilityLevel;
use crate::error::{Error, Result};
use crate::registry::{Mode, RegisterOptions, Registry, SubjectVersion, VersionSelector};
use extract::{Params, SrJson, SrPath, Writer};

pub(crate) const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";

/// The highest id an IMPORT may store a schema under (2^30): the other half of the id space
/// stays for the sequence that numbers registrations.
pub const MAX_IMPORTED_ID: i32 = 1 << 30;

/// The registry's REST API, meant to be nested (e.g. at `/schema-registry`).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(list_subjects))
        .route(
            "/subjects/{subject}",
            post(lookup_schema).delete(delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(get_referenced_by),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(get_schema_by_id))
        .route("/schemas/ids/{id}/schema", get(get_raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(get_id_versions))
        .route("/schemas/ids/{id}/subjects", get(get_id_subjects))
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(get_subject_mode)
                .put(put_subject_mode)
                .delete(delete_subject_mode),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_subject),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .fallback(|| async { Error::RouteNotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .with_state(Registry::new(pool))
}

/// A JSON response with the Confluent media type.
pub(crate) fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => raw_reply(status, bytes),
        // Our bodies are plain structs, strings and numbers; this cannot happen, but a response
        // must still be produced without panicking.
        Err(e) => {
            tracing::error!(error = %e, "failed to serialize schema registry response");
            raw_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error_code":50001,"message":"Error serializing response"}"#.to_vec(),
            )
        }
    }
}

fn raw_reply(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1));
    response
}

fn ok<T: Serialize>(body: &T) -> Result<Response> {
    Ok(reply(StatusCode::OK, body))
}

type State = axum::extract::State<Registry>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<serde_json::Value>>,
    /// IMPORT mode: the global id to store the schema under (Confluent: any value >= 0).
    id: Option<i32>,
    /// IMPORT mode: the version to store the schema under (Confluent: any value >= 1).
    version: Option<i32>,
}

impl SchemaRequest {
    fn parse(&self) -> Result<ParsedSchema> {
        if let Some(schema_type) = &self.schema_type
            && !schema_type.eq_ignore_ascii_case("AVRO")
        {
            return Err(Error::InvalidSchema(format!(
                "schemaType {schema_type} is not supported, only AVRO is supported"
            )));
        }
        if self
            .references
            .as_ref()
            .is_some_and(|refs| !refs.is_empty())
        {
            return Err(Error::InvalidSchema(
                "schema references are not supported: send the schema with every referenced \
                 type defined inline"
                    .to_owned(),
            ));
        }
        match self.schema.as_deref() {
            None => Err(Error::InvalidSchema("Empty schema".to_owned())),
            Some(text) if text.trim().is_empty() => {
                Err(Error::InvalidSchema("Empty schema".to_owned()))
            }
            Some(text) => ParsedSchema::parse(text),
        }
    }

    /// Confluent's "not given" values (id -1, version 0 or -1) are the same as leaving them
    /// out. An imported id must leave the id sequence room to grow: one near 2^31 would make
    /// every later registration, and so every new record type's first publish, fail.
    fn options(&self, normalize: bool) -> Result<RegisterOptions> {
        let id = self.id.filter(|id| *id >= 0);
        if let Some(id) = id
            && !(1..=MAX_IMPORTED_ID).contains(&id)
        {
            return Err(Error::UnprocessableEntity(format!(
                "an imported schema id must be between 1 and {MAX_IMPORTED_ID}, not {id}"
            )));
        }
        Ok(RegisterOptions {
            normalize,
            id,
            version: self.version.filter(|version| *version >= 1),
        })
    }
}

#[derive(Deserialize)]
struct ConfigRequest {
    #[serde(alias = "compatibilityLevel")]
    compatibility: Option<String>,
}

impl ConfigRequest {
    fn level(&self) -> Result<CompatibilityLevel> {
        CompatibilityLevel::parse(self.compatibility.as_deref().unwrap_or_default())
    }
}

#[derive(Deserialize)]
struct ModeRequest {
    mode: Option<String>,
}

impl ModeRequest {
    fn mode(&self) -> Result<Mode> {
        Mode::parse(self.mode.as_deref().unwrap_or_default())
    }
}

#[derive(Serialize)]
struct ModeResponse {
    mode: &'static str,
}

impl From<Mode> for ModeResponse {
    fn from(mode: Mode) -> Self {
        Self {
            mode: mode.as_str(),
        }
    }
}

/// `messages` only with `?verbose=true`, as Confluent.
#[derive(Serialize)]
struct CompatibilityResponse {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

impl CompatibilityResponse {
    fn new(reasons: Vec<String>, verbose: bool) -> Self {
        Self {
            is_compatible: reasons.is_empty(),
            messages: verbose.then_some(reasons),
        }
    }
}

#[derive(Serialize)]
struct IdResponse {
    id: i32,
}

#[derive(Serialize)]
struct SchemaResponse<'a> {
    schema: &'a str,
}

/// Confluent omits `schemaType` for AVRO, the only type stored here.
#[derive(Serialize)]
struct VersionResponse<'a> {
    subject: &'a str,
    version: i32,
    id: i32,
    schema: &'a str,
}

impl<'a> From<&'a SubjectVersion> for VersionResponse<'a> {
    fn from(found: &'a SubjectVersion) -> Self {
        Self {
            subject: &found.subject,
            version: found.version,
            id: found.id,
            schema: &found.schema,
        }
    }
}

#[derive(Serialize)]
struct SubjectVersionRef<'a> {
    subject: &'a str,
    version: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigResponse {
    compatibility_level: &'static str,
}

#[derive(Serialize)]
struct ConfigUpdateResponse {
    compatibility: &'static str,
}

/// A non-numeric id names nothing, which JAX-RS (hence Confluent) reports as a plain 404.
fn parse_id(raw: &str) -> Result<i32> {
    raw.parse().map_err(|_| Error::RouteNotFound)
}

/// The longest subject name written, in bytes: a subject is a key of the registry's tables,
/// whose index entries Postgres keeps under 2,704 bytes (Confluent's subjects are topic
/// names with a suffix, far shorter).
const MAX_SUBJECT_BYTES: usize = 1_000;

/// `subject` as a name to write under, or delete: not empty (the empty name is where the
/// global settings are kept, which deleting its versions reset) and at most
/// [`MAX_SUBJECT_BYTES`].
fn named(subject: &str) -> Result<&str> {
    if subject.is_empty() {
        return Err(Error::UnprocessableEntity(
            "the subject name is empty".into(),
        ));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(Error::UnprocessableEntity(format!(
            "the subject name is longer than {MAX_SUBJECT_BYTES} bytes"
        )));
    }
    Ok(subject)
}

async fn root() -> Result<Response> {
    ok(&serde_json::json!({}))
}

/// Subjects in a page, as Confluent pages them: `offset` (default 0) and `limit` (default and
/// at most [`MAX_SUBJECTS_PAGE`]; -1 means the default).
async fn list_subjects(state: State, params: Params) -> Result<Response> {
    let prefix = params.get("subjectPrefix").unwrap_or_default();
    let offset = match params.get("offset") {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::UnprocessableEntity(format!("offset {raw:?} must be a whole number, 0 or more"))
        })?,
    };
    let limit = match params.get("limit") {
        None => MAX_SUBJECTS_PAGE,
        Some(raw) => match raw.parse::<i64>() {
            Ok(-1) => MAX_SUBJECTS_PAGE,
            Ok(n) if (1..=MAX_SUBJECTS_PAGE).contains(&n) => n,
            _ => {
                return Err(Error::UnprocessableEntity(format!(
                    "limit {raw:?} must be -1 or a whole number from 1 to {MAX_SUBJECTS_PAGE}"
                )));
            }
        },
    };
    ok(&state
        .subjects(params.flag("deleted"), prefix, offset, limit)
        .await?)
}

/// The most subjects one `GET /subjects` returns.
pub const MAX_SUBJECTS_PAGE: i64 = 1000;

async fn list_versions(
    state: State,
    SrPath(subject): SrPath<String>,
    params: Params,
) -> Result<Response> {
    ok(&state.versions(&subject, params.flag("deleted")).await?)
}

async fn register_schema(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
    params: Params,
    SrJson(request): SrJson<SchemaRequest>,
) -> Result<Response> {
    let parsed = request.parse()?;
    let options = request.options(params.flag("normalize"))?;
    let (id, _version) = state
        .register_schema(named(&subject)?, &parsed, options)
        .await?;
    ok(&IdResponse { id })
}

async fn lookup_schema(
    state: State,
    SrPath(subject): SrPath<String>,
    params: Params,
    SrJson(request): SrJson<SchemaRequest>,
) -> Result<Response> {
    let parsed = request.parse()?;
    let found = state
        .lookup(
            &subject,
            &parsed,
            params.flag("deleted"),
            params.flag("normalize"),
        )
        .await?;
    ok(&VersionResponse::from(&found))
}

async fn get_version(
    state: State,
    SrPath((subject, version)): SrPath<(String, String)>,
    params: Params,
) -> Result<Response> {
    let selector = VersionSelector::parse(&version)?;
    let found = state
        .subject_version(&subject, selector, params.flag("deleted"))
        .await?;
    ok(&VersionResponse::from(&found))
}

/// The schema itself as the body (it is JSON already), not wrapped in a string.
async fn get_version_schema(
    state: State,
    SrPath((subject, version)): SrPath<(String, String)>,
    params: Params,
) -> Result<Response> {
    let selector = VersionSelector::parse(&version)?;
    let found = state
        .subject_version(&subject, selector, params.flag("deleted"))
        .await?;
    Ok(raw_reply(StatusCode::OK, found.schema.into_bytes()))
}

/// References aren't supported, so nothing ever refers to a version; the version must exist.
async fn get_referenced_by(
    state: State,
    SrPath((subject, version)): SrPath<(String, String)>,
) -> Result<Response> {
    let selector = VersionSelector::parse(&version)?;
    state.subject_version(&subject, selector, false).await?;
    ok(&[0_i32; 0])
}

async fn delete_subject(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
    params: Params,
) -> Result<Response> {
    ok(&state
        .delete_subject(named(&subject)?, params.flag("permanent"))
        .await?)
}

async fn delete_version(
    state: State,
    _writer: Writer,
    SrPath((subject, version)): SrPath<(String, String)>,
    params: Params,
) -> Result<Response> {
    let selector = VersionSelector::parse(&version)?;
    ok(&state
        .delete_version(named(&subject)?, selector, params.flag("permanent"))
        .await?)
}

async fn schema_types() -> Result<Response> {
    ok(&["AVRO"])
}

async fn get_schema_by_id(state: State, SrPath(id): SrPath<String>) -> Result<Response> {
    let id = parse_id(&id)?;
    let schema = state
        .schema_by_id(id)
        .await?
        .ok_or(Error::SchemaIdNotFound(id))?;
    ok(&SchemaResponse { schema: &schema })
}

async fn get_raw_schema_by_id(state: State, SrPath(id): SrPath<String>) -> Result<Response> {
    let id = parse_id(&id)?;
    let schema = state
        .schema_by_id(id)
        .await?
        .ok_or(Error::SchemaIdNotFound(id))?;
    Ok(raw_reply(StatusCode::OK, schema.into_bytes()))
}

async fn get_id_versions(
    state: State,
    SrPath(id): SrPath<String>,
    params: Params,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let pairs = state.id_versions(id, params.flag("deleted")).await?;
    let body: Vec<SubjectVersionRef<'_>> = pairs
        .iter()
        .map(|(subject, version)| SubjectVersionRef {
            subject,
            version: *version,
        })
        .collect();
    ok(&body)
}

async fn get_id_subjects(
    state: State,
    SrPath(id): SrPath<String>,
    params: Params,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let pairs = state.id_versions(id, params.flag("deleted")).await?;
    // Pairs come ordered by subject, so dropping adjacent repeats leaves each subject once.
    let mut subjects: Vec<&str> = pairs.iter().map(|(subject, _)| subject.as_str()).collect();
    subjects.dedup();
    ok(&subjects)
}

async fn get_global_config(state: State) -> Result<Response> {
    let level = state.global_compatibility().await?;
    ok(&ConfigResponse {
        compatibility_level: level.as_str(),
    })
}

async fn put_global_config(
    state: State,
    _writer: Writer,
    SrJson(request): SrJson<ConfigRequest>,
) -> Result<Response> {
    let level = request.level()?;
    state.set_compatibility(None, level).await?;
    ok(&ConfigUpdateResponse {
        compatibility: level.as_str(),
    })
}

/// Resets the global level to the default and returns the level it replaced.
async fn delete_global_config(state: State, _writer: Writer) -> Result<Response> {
    let removed = state
        .delete_compatibility(None)
        .await?
        .unwrap_or(CompatibilityLevel::DEFAULT);
    ok(&ConfigResponse {
        compatibility_level: removed.as_str(),
    })
}

async fn get_subject_config(
    state: State,
    SrPath(subject): SrPath<String>,
    params: Params,
) -> Result<Response> {
    let level = match state.subject_compatibility(&subject).await? {
        Some(level) => level,
        None if params.flag("defaultToGlobal") => state.global_compatibility().await?,
        None => return Err(Error::SubjectConfigNotFound(subject)),
    };
    ok(&ConfigResponse {
        compatibility_level: level.as_str(),
    })
}

async fn put_subject_config(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
    SrJson(request): SrJson<ConfigRequest>,
) -> Result<Response> {
    let level = request.level()?;
    state
        .set_compatibility(Some(named(&subject)?), level)
        .await?;
    ok(&ConfigUpdateResponse {
        compatibility: level.as_str(),
    })
}

async fn delete_subject_config(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
) -> Result<Response> {
    let removed = state
        .delete_compatibility(Some(named(&subject)?))
        .await?
        .ok_or(Error::SubjectNotFound(subject))?;
    ok(&ConfigResponse {
        compatibility_level: removed.as_str(),
    })
}

async fn get_global_mode(state: State) -> Result<Response> {
    ok(&ModeResponse::from(state.mode(None).await?))
}

async fn put_global_mode(
    state: State,
    _writer: Writer,
    params: Params,
    SrJson(request): SrJson<ModeRequest>,
) -> Result<Response> {
    let mode = request.mode()?;
    state.set_mode(None, mode, params.flag("force")).await?;
    ok(&ModeResponse::from(mode))
}

async fn get_subject_mode(
    state: State,
    SrPath(subject): SrPath<String>,
    params: Params,
) -> Result<Response> {
    let mode = match state.stored_mode(Some(&subject)).await? {
        Some(mode) => mode,
        None if params.flag("defaultToGlobal") => state.mode(None).await?,
        None => return Err(Error::SubjectModeNotFound(subject)),
    };
    ok(&ModeResponse::from(mode))
}

async fn put_subject_mode(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
    params: Params,
    SrJson(request): SrJson<ModeRequest>,
) -> Result<Response> {
    let mode = request.mode()?;
    state
        .set_mode(Some(named(&subject)?), mode, params.flag("force"))
        .await?;
    ok(&ModeResponse::from(mode))
}

/// Returns the mode it removed; the subject falls back to the global mode.
async fn delete_subject_mode(
    state: State,
    _writer: Writer,
    SrPath(subject): SrPath<String>,
) -> Result<Response> {
    let removed = state
        .delete_mode(named(&subject)?)
        .await?
        .ok_or(Error::SubjectNotFound(subject))?;
    ok(&ModeResponse::from(removed))
}

/// Checks against one version only, in the direction of the subject's level (transitivity
/// means nothing against a single version).
async fn check_against_version(
    state: State,
    SrPath((subject, version)): SrPath<(String, String)>,
    params: Params,
    SrJson(request): SrJson<SchemaRequest>,
) -> Result<Response> {
    let selector = VersionSelector::parse(&version)?;
    // The version is resolved first, so an unknown subject or version wins over a bad schema,
    // as in Confluent. Soft-deleted versions can't be chosen.
    let chosen = state.subject_version(&subject, selector, false).await?;
    let parsed = request.parse()?;
    let reasons = state
        .incompatibilities_with_version(&chosen, &parsed)
        .await?;
    ok(&CompatibilityResponse::new(reasons, params.flag("verbose")))
}

/// Checks as registration would: against the latest version, or all of them for a transitive
/// level; a subject without versions accepts anything.
async fn check_against_subject(
    state: State,
    SrPath(subject): SrPath<String>,
    params: Params,
    SrJson(request): SrJson<SchemaRequest>,
) -> Result<Response> {
    let parsed = request.parse()?;
    let reasons = state
        .incompatibilities_with_subject(&subject, &parsed)
        .await?;
    ok(&CompatibilityResponse::new(reasons, params.flag("verbose")))
}
