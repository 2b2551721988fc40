//! The command side: each command validates its input, writes its state and the event it
//! causes to the outbox in one Postgres transaction (no dual writes), and returns a
//! consistency token (the event id) that queries can wait on.
//!
//! The outbox writer and the trace context it records are shared plumbing
//! (`dhanman_plumbing`).
//!
//! It never talks to Kafka (the relay publishes what it writes) and never reads the
//! processors' projections: a command decides on the command side's own rows.

pub mod idempotency;
pub mod input;
pub mod invoice_batch;
pub mod invoice_email;
pub mod invoice_group;
pub mod monthly;
pub mod orgs;
pub mod payroll;
pub mod purchase;
pub mod receipts;
pub mod sales;
pub mod users;

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
    /// The caller's role may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An outbox write fails as the command would have: on the database or on encoding.
impl From<dhanman_plumbing::Error> for Error {
    fn from(e: dhanman_plumbing::Error) -> Self {
        match e {
            dhanman_plumbing::Error::Database(e) => Error::Database(e),
            dhanman_plumbing::Error::Encode(e) => Error::Encode(e),
        }
    }
}

/// Who is calling: every command and query runs inside one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organization_id: uuid::Uuid,
    pub role: String,
    /// The user the API key belongs to; `None` for the pipeline's own jobs.
    pub user_id: Option<uuid::Uuid>,
    pub correlation_id: String,
}

/// Roles that keep the books: customers, invoices, payments, bills, salaries.
pub const BOOKKEEPERS: &[&str] = &["admin", "accountant"];

impl Caller {
    /// Refuses the command unless the caller has one of `roles`.
    pub fn require(&self, roles: &[&str], what: &str) -> Result<()> {
        if roles.contains(&self.role.as_str()) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "{what} needs the role {}; this key has the role {}",
            roles.join(" or "),
            self.role
        )))
    }

    /// The user behind the key; a job running without one may not do this.
    pub fn user(&self, what: &str) -> Result<uuid::Uuid> {
        self.user_id
            .ok_or_else(|| Error::Forbidden(format!("{what} needs a user's API key")))
    }
}
