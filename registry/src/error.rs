use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::reply;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the registry can report. Messages and `error_code`s follow Confluent Schema
/// Registry so that its clients (which sometimes branch on the code) behave the same here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(i32),
    #[error("Schema {0} not found")]
    SchemaIdNotFound(i32),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: i32 },
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: i32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Subject '{0}' does not have subject-level mode configured")]
    SubjectModeNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    #[error("Invalid mode. Valid values are READWRITE, READONLY and IMPORT")]
    InvalidMode(String),
    /// Refused by the subject's mode, or an import that would overwrite a stored id or version.
    #[error("{0}")]
    OperationNotPermitted(String),
    /// An import names an id, but the schema is already stored under another one; a schema has
    /// exactly one id here.
    #[error("Schema already registered with id {existing} instead of input id {requested}")]
    IdDoesNotMatch { existing: i32, requested: i32 },
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject '{subject}', details: [{}]",
        reasons.join(", ")
    )]
    IncompatibleSchema {
        subject: String,
        reasons: Vec<String>,
    },
    #[error("{0}")]
    MalformedRequest(String),
    #[error("{0}")]
    UnprocessableEntity(String),
    #[error("Unsupported content type: {0}")]
    UnsupportedMediaType(String),
    #[error("The request body is larger than the registry takes: {0}")]
    TooLarge(String),
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// A write without the credentials of an active registry user.
    #[error(
        "Unauthorized: writes to this registry need HTTP basic auth as a registry user (basic.auth.user.info=name:secret; `dhanman registry users add NAME`)"
    )]
    Unauthorized,
    #[error("Error in the backend data store")]
    Database(#[from] sqlx::Error),
}

impl Error {
    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Self::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Self::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            Self::SchemaIdNotFound(_) | Self::SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            Self::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            Self::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            Self::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            Self::VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            Self::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            Self::SubjectModeNotFound(_) => (StatusCode::NOT_FOUND, 40409),
            Self::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Self::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Self::InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Self::InvalidMode(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42204),
            Self::OperationNotPermitted(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            Self::IdDoesNotMatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42207),
            Self::IncompatibleSchema { .. } => (StatusCode::CONFLICT, 409),
            Self::MalformedRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Self::UnprocessableEntity(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 413),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, 40101),
            Self::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }

    /// The Confluent `error_code` carried in the response body.
    pub fn error_code(&self) -> u32 {
        self.status_and_code().1
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, error_code) = self.status_and_code();
        // Only the backend error carries details worth an operator's attention; the client gets
        // the fixed Confluent message so internals (SQL, constraint names) don't leak.
        if let Self::Database(source) = &self {
            tracing::error!(error = %source, "schema registry backend error");
        }
        let mut response = reply(
            status,
            &ErrorBody {
                error_code,
                message: self.to_string(),
            },
        );
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"schema-registry\""),
            );
        }
        response
    }
}
