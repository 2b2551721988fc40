//! Extractors that turn bad input into errors naming the field.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use dhanman_producers::Caller;
use dhanman_schemas::events::FieldError;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::middleware::CorrelationId;
use crate::{ApiError, AppState, MAX_BODY_BYTES};

/// The caller, from `Authorization: Bearer <api key>`, within its key's request rate.
pub struct Auth(pub Caller);

impl<S> FromRequestParts<S> for Auth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let key = state
            .keys
            .authenticate(&state.pool, key)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if let Some(limit) = &state.rate_limit {
            limit
                .check(key.key_id)
                .map_err(|wait| ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64))?;
        }
        let correlation_id = parts
            .extensions
            .get::<CorrelationId>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        Ok(Auth(Caller {
            organization_id: key.organization_id,
            role: key.role,
            user_id: Some(key.user_id),
            correlation_id,
        }))
    }
}

/// A JSON body, kept as bytes too (the idempotency hash is over the exact body). `LIMIT`
/// is the size its route allows (a `DefaultBodyLimit` layer on routes above the default).
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY_BYTES> {
    pub value: T,
    pub bytes: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        if declared_too_large(&req, LIMIT) {
            return Err(ApiError::TooLarge(LIMIT));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(LIMIT))?;
        let value = parse_json(&bytes)?;
        Ok(JsonBody { value, bytes })
    }
}

/// Whether the body is declared JSON: the media type `application/json` (in any case), with
/// no parameter but a UTF-8 `charset` (JSON has no other).
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(json_media_type)
}

fn json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            let value = value.trim().trim_matches('"');
            name.trim().eq_ignore_ascii_case("charset")
                && (value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        })
}

/// A body its `Content-Length` declares larger than `limit` is refused before any of it is
/// read (and before a client that asked `Expect: 100-continue` is told to send it).
fn declared_too_large(req: &Request, limit: usize) -> bool {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > limit as u64)
}

/// The body of a command whose fields are all optional: no body at all (or only
/// whitespace) is the default value; anything else must be JSON, as for [`JsonBody`].
pub struct OptionalJsonBody<T>(pub JsonBody<T>);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = is_json(&req);
        if declared_too_large(&req, MAX_BODY_BYTES) {
            return Err(ApiError::TooLarge(MAX_BODY_BYTES));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(JsonBody {
                value: T::default(),
                bytes,
            }));
        }
        if !json_type {
            return Err(ApiError::UnsupportedMediaType);
        }
        let value = parse_json(&bytes)?;
        Ok(OptionalJsonBody(JsonBody { value, bytes }))
    }
}

/// One item of a batch (its JSON text as sent), judged as [`parse_json`] judges a body:
/// the error names the field inside the item (empty: the item itself).
pub fn parse_item<T: DeserializeOwned>(item: &RawValue) -> Result<T, FieldError> {
    parse_json(item.get().as_bytes()).map_err(|e| match e {
        ApiError::Validation { field, message } | ApiError::BadRequest { field, message } => {
            FieldError::new(if field == "body" { "" } else { &field }, message)
        }
        other => FieldError::new("", other.to_string()),
    })
}

/// Parses JSON and reports which field was wrong: 400 for malformed JSON, 422 for a
/// well-formed body with a wrong or unknown field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would take `[...]` for a struct's fields in order; commands are objects.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return Err(ApiError::validation("body", "must be a JSON object"));
        }
        Some(_) => return Err(ApiError::bad_request("body", "malformed JSON")),
    }
    // Postgres text cannot hold NUL, and no field of ours means one: JSON carries it only
    // as the escape `\u0000`, so only a body that has one is walked for the field.
    if contains_nul_escape(bytes)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(field) = field_with_nul(&value, "")
    {
        return Err(ApiError::validation(
            &field,
            "must not contain NUL characters",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request("body", format!("malformed JSON: {message}"));
        }
        // serde names unknown fields in the message; the path ends at the field or, in a
        // nested object, may end at the object holding it.
        let field = match message.split('`').nth(1) {
            Some(name) if message.starts_with("unknown field") => match path.as_str() {
                "." | "" => name.to_string(),
                at if at == name || at.ends_with(&format!(".{name}")) => at.to_string(),
                at => format!("{at}.{name}"),
            },
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        ApiError::validation(&field, message)
    })?;
    // One value, then nothing but whitespace: `{"name":"a"}{"name":"b"}` is not a body.
    de.end()
        .map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn contains_nul_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].eq_ignore_ascii_case(b"0000"))
}

/// The path (`items[2].name`, as serde_path_to_error names it) of the first string or
/// object key holding a NUL character.
fn field_with_nul(value: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if at.is_empty() {
            "body".to_string()
        } else {
            at.to_string()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| field_with_nul(v, &format!("{at}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                return Some(here());
            }
            field_with_nul(v, &path)
        }),
        _ => None,
    }
}

/// Query parameters, with the field named on error.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = parts.uri.query()
            && let Some((key, _)) =
                form_urlencoded_pairs(query).find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::validation(
                &key,
                "must not contain NUL characters",
            ));
        }
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => {
                let text = e.body_text();
                let field = text
                    .split('`')
                    .nth(1)
                    .or_else(|| text.split(": ").nth(1).and_then(|s| s.split(':').next()))
                    .unwrap_or("query")
                    .to_string();
                Err(ApiError::validation(&field, text))
            }
        }
    }
}

/// The decoded `key=value` pairs of a query string.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
}

/// A path id that must be a UUID; anything else is a 404, as it names nothing.
pub fn path_uuid(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Order {
        items: Vec<Item>,
    }

    /// The status and the field `parse_json` refuses `body` with.
    fn refusal(body: &str) -> (u16, String) {
        match parse_json::<Order>(body.as_bytes()).unwrap_err() {
            ApiError::Validation { field, .. } => (422, field),
            ApiError::BadRequest { field, .. } => (400, field),
            other => panic!("{body}: {other}"),
        }
    }

    #[test]
    fn a_body_is_one_json_object_and_its_wrong_fields_are_named_where_they_are() {
        let order = parse_json::<Order>(b" {\"items\": [{\"name\": \"a\"}]}\r\n ").unwrap();
        assert_eq!(order.items.len(), 1);
        for (body, status, field) in [
            (r#"{"items": [{"name": "a", "x": 1}]}"#, 422, "items[0].x"),
            (
                r#"{"items": [{"name": "a"}, {"name": 7}]}"#,
                422,
                "items[1].name",
            ),
            (r#"{"items": [], "y": 1}"#, 422, "y"),
            (r#"{"items": []}{"items": []}"#, 400, "body"),
            (r#"{"items": []} x"#, 400, "body"),
            (r#"{"items": []"#, 400, "body"),
            (r#"[]"#, 422, "body"),
        ] {
            assert_eq!(refusal(body), (status, field.to_string()), "{body}");
        }
    }

    #[test]
    fn json_is_application_json_in_any_case_in_utf_8_only() {
        for value in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(json_media_type(value), "{value}");
        }
        for value in [
            "application/jsonx",
            "application/json-patch+json",
            "text/json",
            "application/json; charset=utf-16",
            "application/json; boundary=x",
            "",
        ] {
            assert!(!json_media_type(value), "{value}");
        }
    }
}
