//! Logs of every process, the series the API process registers at its start, and the
//! gauges of each process's Postgres pools. (The metrics listener of the processes that
//! serve no API is in `dhanman_ops::startup`.)

use std::time::Duration;

use sqlx::PgPool;

/// Sessions of a pool (`pool`, `state`: `in_use` or `idle`).
pub const DB_CONNECTIONS: &str = "dhanman_db_connections";
/// The most sessions a pool opens (`pool`).
pub const DB_POOL_SIZE: &str = "dhanman_db_pool_size";

/// Series of the API process that would otherwise appear only after their first event:
/// the gateway breaker's state and its retry counters.
pub fn register_api_metrics(payments: &dhanman_payments::Payments) {
    use dhanman_payments::metric;
    metrics::gauge!(metric::BREAKER_STATE).set(payments.gateway().breaker_state().gauge());
    for op in ["charge", "refund"] {
        metrics::counter!(metric::RETRIES, "op" => op).increment(0);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`); JSON lines when
/// `DHANMAN_LOG_FORMAT=json`.
pub fn init_telemetry(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let json = std::env::var("DHANMAN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Every second until dropped: [`DB_CONNECTIONS`] in use and idle and [`DB_POOL_SIZE`] of
/// each of `pools`, by name (`api`: the pool the API answers on; `work`: the relay's,
/// the processors' and the jobs'). A pool whose sessions stay all in use has requests or
/// lanes waiting for one.
pub async fn export_pool_gauges(pools: Vec<(&'static str, PgPool)>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        for (name, pool) in &pools {
            let (size, idle) = (
                pool.size(),
                u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            );
            let in_use = size.saturating_sub(idle);
            metrics::gauge!(DB_CONNECTIONS, "pool" => *name, "state" => "in_use").set(in_use);
            metrics::gauge!(DB_CONNECTIONS, "pool" => *name, "state" => "idle").set(idle);
            let most = pool.options().get_max_connections();
            metrics::gauge!(DB_POOL_SIZE, "pool" => *name).set(most);
        }
    }
}
