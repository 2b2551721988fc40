//! Prometheus metrics: the recorder is installed once per process, `GET /metrics` renders
//! it in the text exposition format.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Seconds; gateway calls take milliseconds to a timeout of seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder (the first call does; later ones are no-ops). Without
/// it, metrics are dropped and `/metrics` is empty.
pub fn install() {
    HANDLE.get_or_init(|| {
        let installed = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                DURATION_BUCKETS,
            )
            .and_then(PrometheusBuilder::install_recorder);
        match installed {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "metrics recorder not installed; /metrics stays empty");
                None
            }
        }
    });
}

/// `GET /metrics`.
pub async fn render() -> Response {
    let mut text = HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    // The lag gauges of the newest sample, kept outside the recorder (see there why).
    text.push_str(&dhanman_connectors::lag::exposition::text());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The metrics-only listener of processes that serve no API (`dhanman relay`,
/// `dhanman process <name>`): `GET /metrics` and `GET /healthz`, so Prometheus can scrape
/// every process and an orchestrator can probe it.
pub fn router() -> axum::Router {
    async fn live() -> &'static str {
        "ok"
    }
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .route("/healthz", axum::routing::get(live))
}

/// Installs the recorder and serves [`router`] until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    install();
    axum::serve(listener, router()).await
}
