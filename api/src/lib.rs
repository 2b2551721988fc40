//! The HTTP API: commands in, balances out, and the embedded schema registry under
//! `/schema-registry/`.

mod consistency;
mod error;
mod extract;
mod middleware;
pub mod prometheus;
mod routes;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use sqlx::PgPool;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// How long a query with `?consistent_with=` waits for the ledger.
    pub consistency_wait: Duration,
    /// Which approvals a purchase order needs.
    pub approval_policy: dhanman_producers::purchase::ApprovalPolicy,
    /// The payment saga; `None` where the API runs without one (benchmark, in-process
    /// tests), and `/v1/payments` then fails with 500 (not configured).
    pub payments: Option<dhanman_payments::Payments>,
}

impl AppState {
    /// State with the default policies; callers set fields to change them.
    pub fn new(pool: PgPool, consistency_wait: Duration) -> Self {
        AppState {
            pool,
            consistency_wait,
            approval_policy: Default::default(),
            payments: None,
        }
    }
}

/// Request bodies above this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let registry = dhanman_registry::router(state.pool.clone());
    Router::new()
        .merge(routes::router())
        .with_state(state)
        .nest("/schema-registry", registry)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(middleware::http_metrics))
        .layer(axum::middleware::from_fn(middleware::correlation))
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
