//! The HTTP API: commands in, balances out, and the embedded schema registry under
//! `/schema-registry/`.
//!
//! Handlers authenticate, parse and answer; every write is a command of `producers` (or the
//! payment saga), run in one transaction with its idempotency key. No business rule lives
//! here.

pub mod consistency;
mod error;
mod extract;
pub mod invoice_writer;
pub mod key_cache;
mod middleware;
mod openapi;
mod page;
pub mod prometheus;
pub mod rate_limit;
mod routes;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use sqlx::PgPool;
use uuid::Uuid;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// How long a query with `?consistent_with=` waits for the ledger.
    pub consistency_wait: Duration,
    /// How long the processors keep their gate rows: a consistency token older than this
    /// counts as applied (its gate row may be pruned).
    pub gate_retention: Duration,
    /// What queries waiting for consistency share (see [`consistency`]).
    pub applied: consistency::Applied,
    /// Which approvals a purchase order needs.
    pub approval_policy: dhanman_producers::purchase::ApprovalPolicy,
    /// The payment saga; `None` where the API runs without one (benchmark, in-process
    /// tests), and `/v1/payments` then fails with 500 (not configured).
    pub payments: Option<dhanman_payments::Payments>,
    /// The ledger audit's line of `/readyz`, asked for on each request; `None` where no
    /// audit runs (in-process tests).
    pub ledger_audit: Option<StatusLine>,
    /// API keys that authenticated lately.
    pub keys: key_cache::KeyCache,
    /// Requests per API key; `None`: unlimited.
    pub rate_limit: Option<rate_limit::KeyRateLimit>,
    /// How `GET /v1/lag` judges each partition's status.
    pub lag_rules: dhanman_connectors::lag::status::Rules,
    /// Where `POST /v1/invoices` hands its invoices, to be written in groups.
    pub invoices: invoice_writer::InvoiceWriter,
    /// Customers read lately, and their organizations (which never change), so that a
    /// consistent balance read need not look the customer up before it waits.
    pub customer_organizations: moka::sync::Cache<Uuid, Uuid>,
}

/// Customers whose organizations [`AppState::customer_organizations`] keeps at most.
pub const CUSTOMERS_REMEMBERED: u64 = 16_384;

/// An empty [`AppState::customer_organizations`].
pub fn customer_organizations() -> moka::sync::Cache<Uuid, Uuid> {
    moka::sync::Cache::new(CUSTOMERS_REMEMBERED)
}

/// A line `/readyz` reports without failing on it, computed when asked.
pub type StatusLine =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

impl AppState {
    /// State with the default policies; callers set fields to change them. Starts the
    /// invoice writers on the current Tokio runtime.
    pub fn new(pool: PgPool, consistency_wait: Duration) -> Self {
        AppState {
            invoices: invoice_writer::InvoiceWriter::start(&pool, invoice_writer::DEFAULT_WRITERS),
            pool,
            consistency_wait,
            gate_retention: Duration::from_secs(30 * 24 * 3600),
            applied: Default::default(),
            approval_policy: Default::default(),
            payments: None,
            ledger_audit: None,
            lag_rules: Default::default(),
            keys: key_cache::KeyCache::new(key_cache::DEFAULT_TTL),
            customer_organizations: customer_organizations(),
            rate_limit: rate_limit::KeyRateLimit::new(
                rate_limit::DEFAULT_PER_SECOND,
                rate_limit::DEFAULT_BURST,
            ),
        }
    }
}

/// Request bodies above this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Requests one API process serves at once, whatever their routes (the embedded schema
/// registry's apart); more are answered 503 at once (load shed) instead of queueing behind a
/// database pool that cannot serve them.
pub const MAX_IN_FLIGHT: usize = 256;

/// Requests the embedded schema registry serves at once, on a budget of its own: the
/// pipeline's own processes look schemas up there over HTTP (a processor's first read of
/// each schema id, the relay's first write of each record), and under a flood of commands
/// those look-ups must neither be shed nor take a command's place.
pub const REGISTRY_MAX_IN_FLIGHT: usize = 32;

/// The longest a request may take, the wait for consistency included; past it, 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    let registry = dhanman_registry::router(state.pool.clone());
    let api = routes::router()
        .layer(axum::middleware::from_fn(middleware::path_guard))
        .with_state(state);
    shed_beyond(api, MAX_IN_FLIGHT, "requests")
        .nest(
            "/schema-registry",
            shed_beyond(registry, REGISTRY_MAX_IN_FLIGHT, "schema registry requests"),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(middleware::explain_bare_errors))
        .layer(axum::middleware::from_fn(middleware::http_metrics))
        .layer(axum::middleware::from_fn(middleware::correlation))
        .layer(axum::middleware::from_fn(middleware::close_unread))
}

/// `router` serving at most `max` requests at once; more are answered 503 `busy` at once,
/// naming the limit and `what` it counts.
fn shed_beyond(router: Router, max: usize, what: &'static str) -> Router {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                move |_: tower::BoxError| middleware::overloaded(max, what),
            ))
            .load_shed()
            // One semaphore for the whole router: `Router::layer` gives every route (and
            // method) a service of its own, so a plain concurrency limit would cap each
            // route separately, not the process.
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max)),
    )
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_until(listener, state, std::future::pending()).await
}

/// Serves until `shutdown` resolves; then takes no new connections and returns once the
/// requests in flight are answered.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // One connection per process listens for committed batches (consistency waits).
    let listening = tokio::spawn(state.applied.clone().listen(state.pool.clone()));
    // Made into a service once: handing `axum::serve` the router itself builds every route
    // again for each connection (about 60 KiB a connection, kept while it lives).
    let served = axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await;
    listening.abort();
    served
}
