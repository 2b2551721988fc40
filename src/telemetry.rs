//! Metrics of the processes that serve no API: `dhanman relay` and `dhanman process
//! <name>` serve `/metrics` and `/healthz` on `DHANMAN_METRICS_ADDR` when it is set, so
//! Prometheus can scrape every process of a deployment.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::Config;

/// Binds the metrics listener if `DHANMAN_METRICS_ADDR` is set. Binding first, before the
/// part starts, makes a taken port an error at start-up rather than a silent gap.
pub async fn bind_metrics(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.metrics_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics listener to {addr} (DHANMAN_METRICS_ADDR)")
    })?;
    // Installed before the part runs, so nothing it records is lost.
    dhanman_api::prometheus::install();
    Ok(Some(listener))
}

/// Runs `part`, serving the metrics listener (if any) beside it; returns when the part
/// stops or the listener fails.
pub async fn with_metrics(
    listener: Option<TcpListener>,
    part: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let Some(listener) = listener else {
        return part.await;
    };
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    tokio::select! {
        result = part => result,
        served = dhanman_api::prometheus::serve(listener) => {
            served.context("serving /metrics (DHANMAN_METRICS_ADDR)")?;
            anyhow::bail!("the metrics listener stopped")
        }
    }
}

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
