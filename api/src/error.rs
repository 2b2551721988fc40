//! The API's one error type. 4xx bodies name the field and the problem; 5xx bodies hide
//! internals, which are logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotYetConsistent(String),
    /// Too much waiting already (the consistency waiters), or a transient database failure
    /// ([`dhanman_plumbing::postgres::is_transient`]): retry shortly (503, `Retry-After: 1`).
    #[error("{0}")]
    Busy(String),
    /// The key spent its request rate (see [`crate::rate_limit`]): retry after the given
    /// whole seconds (429).
    #[error("this API key is over its request rate; retry after {0} s")]
    RateLimited(u64),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Keeps its cause for the log and shows the client nothing of it.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                ApiError::Conflict("the resource already exists".into())
            }
            // The database's moment, not the request's fault (no connection in time, a
            // deadlock, a serialization failure, ...): the transaction was rolled back, and a
            // retry with the same idempotency key cannot do a command twice.
            _ if dhanman_plumbing::postgres::is_transient(&e) => {
                tracing::warn!(error = %e, "a request met a transient database failure");
                ApiError::Busy("the database could not take the request now; retry shortly".into())
            }
            _ => ApiError::internal(format!("database: {e}")),
        }
    }
}

impl From<dhanman_producers::Error> for ApiError {
    fn from(e: dhanman_producers::Error) -> Self {
        use dhanman_producers::Error as E;
        match e {
            E::Validation(f) => ApiError::Validation {
                field: f.field,
                message: f.message,
            },
            E::NotFound(what) => ApiError::NotFound(what.to_string()),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::Database(db) => db.into(),
            E::Encode(e) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = match &self {
            ApiError::Validation { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some(field.as_str()),
            ),
            ApiError::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", Some(field.as_str()))
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("Authorization"),
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", Some("Authorization")),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::NotYetConsistent(_) => (
                StatusCode::CONFLICT,
                "not_yet_consistent",
                Some("consistent_with"),
            ),
            ApiError::Busy(message) => {
                let body = json!({"error": "busy", "message": message});
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                return response;
            }
            ApiError::RateLimited(seconds) => {
                let body = json!({"error": "rate_limited", "message": self.to_string()});
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*seconds),
                );
                return response;
            }
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some("body"),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some("Content-Type"),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                let body =
                    json!({"error": "internal", "message": "internal error; see the server log"});
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        let message = match &self {
            ApiError::Validation { message, .. } | ApiError::BadRequest { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        };
        let mut body = json!({"error": code, "message": message});
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        (status, Json(body)).into_response()
    }
}
