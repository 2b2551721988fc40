//! The command side: each command validates its input, writes its state and the event it
//! causes to the outbox in one Postgres transaction (no dual writes), and returns a
//! consistency token (the event id) that queries can wait on.

pub mod idempotency;
pub mod monthly;
pub mod orgs;
pub mod outbox;
pub mod payroll;
pub mod sales;

use dhanman_schemas::events::FieldError;

/// Failures of a command, each with the HTTP status the API gives it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input breaks a rule; names the field (422).
    #[error(transparent)]
    Validation(#[from] FieldError),
    /// The id does not exist in the caller's organization (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is calling: every command and query runs inside one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organization_id: uuid::Uuid,
    pub role: String,
    pub correlation_id: String,
}
