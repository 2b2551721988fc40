//! Logs of every process, and the series the API process registers at its start. (The
//! metrics listener of the processes that serve no API is in `dhanman_ops::startup`.)

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
