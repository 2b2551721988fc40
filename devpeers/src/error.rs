//! The gateway's one error type. 4xx bodies name the field and the problem, the way a
//! PSP's do; the only 5xx a client normally sees is the 503 the fault switches inject.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (400): no `Idempotency-Key`, a body that is not JSON.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// The request is well formed but a field's value is wrong (422).
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// The request contradicts what the gateway already did (409).
    #[error("{message}")]
    Conflict {
        field: Option<&'static str>,
        message: String,
    },
    /// Injected by the fault switches (or `down`): nothing was charged, retrying is safe.
    #[error("the gateway is temporarily unavailable; nothing was charged")]
    Unavailable,
    #[error("binding the gateway to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving the gateway: {0}")]
    Serve(std::io::Error),
    /// Keeps its cause for the log and shows the client nothing of it.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Error::Validation {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn conflict(field: Option<&'static str>, message: impl Into<String>) -> Self {
        Error::Conflict {
            field,
            message: message.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            Error::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, Some(field.as_str())),
            Error::Validation { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Some(field.as_str()))
            }
            Error::NotFound(_) => (StatusCode::NOT_FOUND, None),
            Error::Conflict { field, .. } => (StatusCode::CONFLICT, *field),
            Error::Unavailable => {
                let body = json!({"error": self.to_string()});
                // A polite PSP tells the client when to come back.
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    Json(body),
                )
                    .into_response();
            }
            Error::Bind { .. } | Error::Serve(_) | Error::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                let body = json!({"error": "internal error; see the gateway's log"});
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        let message = match &self {
            Error::BadRequest { message, .. } | Error::Validation { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        };
        let mut body = json!({"error": message});
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        (status, Json(body)).into_response()
    }
}
