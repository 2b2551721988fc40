//! Extractors whose rejections are registry [`Error`]s, so that clients always get a
//! Confluent-shaped JSON error instead of axum's plain-text rejections.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Media types a Confluent client may send; `application/json`, `application/octet-stream`
/// (Confluent's "generic request") and a missing header are accepted too because curl and
/// hand-written clients use them.
const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

/// Path parameters; a segment that cannot be extracted is a route that doesn't exist.
pub struct SrPath<T>(pub T);

impl<S, T> FromRequestParts<S> for SrPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::RouteNotFound)?;
        // A NUL decodes fine, but no subject can hold one (Postgres's text cannot).
        if parts.uri.path().contains("%00") {
            return Err(Error::MalformedRequest(
                "the path holds a NUL character".into(),
            ));
        }
        Ok(Self(value))
    }
}

/// Query string flags. Booleans are parsed the lenient JAX-RS way Confluent inherits:
/// `true` in any case is true, anything else false.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|rejection| Error::MalformedRequest(rejection.body_text()))?;
        if params
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(Error::MalformedRequest(
                "a query parameter holds a NUL character".into(),
            ));
        }
        Ok(Self(params))
    }
}

/// A JSON request body. Like Confluent (Jackson behind JAX-RS), text that isn't JSON is a
/// 400 and JSON of the wrong shape is a 422.
pub struct SrJson<T>(pub T);

impl<S, T> FromRequest<S> for SrJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .ok()
                .and_then(|value| value.split(';').next())
                .map(str::trim)
                .unwrap_or_default();
            if !ACCEPTED_CONTENT_TYPES
                .iter()
                .any(|accepted| accepted.eq_ignore_ascii_case(essence))
            {
                return Err(Error::UnsupportedMediaType(essence.to_owned()));
            }
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::TooLarge(rejection.body_text())
            } else {
                Error::MalformedRequest(rejection.body_text())
            }
        })?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::MalformedRequest(format!("Unexpected request body: {e}")))?;
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| Error::UnprocessableEntity(format!("Unprocessable entity: {e}")))
    }
}

/// A request made as an active registry user (HTTP basic auth, `name:secret`): what every
/// write needs. Reads stay open, as on a Confluent registry without RBAC. Each write is
/// logged with the user who made it.
pub struct Writer;

impl FromRequestParts<crate::registry::Registry> for Writer {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::registry::Registry,
    ) -> Result<Self, Self::Rejection> {
        use base64::Engine;
        let encoded = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or(Error::Unauthorized)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(Error::Unauthorized)?;
        let (name, secret) = decoded.split_once(':').ok_or(Error::Unauthorized)?;
        // No user's name holds a NUL (nor can a Postgres text to look it up by).
        if name.contains('\0') {
            return Err(Error::Unauthorized);
        }
        if crate::users::verify(state.pool(), name, secret).await? {
            tracing::info!(
                registry_user = name,
                method = %parts.method,
                path = %parts.uri.path(),
                "schema registry write"
            );
            Ok(Writer)
        } else {
            Err(Error::Unauthorized)
        }
    }
}
