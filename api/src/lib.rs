//! The HTTP API: commands in, balances out, and the embedded schema registry under
//! `/schema-registry/`.

mod consistency;
mod error;
mod extract;
mod middleware;
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
        .layer(axum::middleware::from_fn(middleware::correlation))
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
