//! `GET /dashboard`: live charts of consumer lag, throughput, dead-letter size and processing
//! time, drawn in the browser from this process's own `GET /metrics`. The page and its
//! charting library (uPlot, from npm, see `api/assets/README.md`) are compiled into the
//! binary: no CDN, nothing to deploy beside it. Unauthenticated, like `/metrics`, and
//! showing nothing `/metrics` does not.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const UPLOT_JS: &str = include_str!("../../assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uPlot.min.css");

/// The page and its script change with the binary: revalidate them every load.
const PAGE_CACHE: &str = "no-cache";
/// The library only changes when a new binary pins another version; a day is plenty.
const LIBRARY_CACHE: &str = "public, max-age=86400";

pub async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, PAGE_CACHE),
        ],
        PAGE,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, PAGE_CACHE),
        ],
        SCRIPT,
    )
}

pub async fn uplot_js() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, LIBRARY_CACHE),
        ],
        UPLOT_JS,
    )
}

pub async fn uplot_css() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, LIBRARY_CACHE),
        ],
        UPLOT_CSS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_what_the_binary_serves() {
        for asset in [
            "dashboard/uplot.js",
            "dashboard/uplot.css",
            "dashboard/dashboard.js",
        ] {
            assert!(PAGE.contains(asset), "the page does not load {asset}");
        }
        // No CDN: every script and stylesheet is one of ours.
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!SCRIPT.contains("http://") && !SCRIPT.contains("https://"));
        assert!(UPLOT_JS.contains("uPlot"));
    }
}
