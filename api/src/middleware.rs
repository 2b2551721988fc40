//! Correlation ids: accepted from `X-Correlation-Id` or created, returned on the response,
//! and a field of the span every log line of the request runs in. The W3C `traceparent`
//! likewise: a well-formed one is continued (this request is a child span of it), a
//! missing or malformed one starts a new trace; outbox rows the request writes carry it.
//! And the HTTP server's metrics, by route template; and a connection closed, saying so, after
//! a request answered before its body was read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dhanman_plumbing::trace::{self, TraceParent};
use tracing::Instrument;

pub const HEADER: &str = "x-correlation-id";

#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn correlation(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let traceparent = req
        .headers()
        .get(trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map_or_else(TraceParent::new_root, |parent| parent.child());
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        correlation_id = %id,
        trace_id = %traceparent.trace_id(),
        span_id = %traceparent.span_id(),
    );
    let mut response = trace::in_request(traceparent, next.run(req))
        .instrument(span.clone())
        .await;
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), "request"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&traceparent.to_string()) {
        response.headers_mut().insert(trace::HEADER, value);
    }
    response
}

/// Counter: requests served, labels `method` (a standard method or `other`), `route` (the
/// route template, or `unmatched`) and `status`.
pub const HTTP_REQUESTS: &str = "dhanman_http_requests_total";
/// Histogram: seconds from request to response head, labels `method` and `route`.
pub const HTTP_REQUEST_DURATION: &str = "dhanman_http_request_duration_seconds";

/// The `method` label: one of the standard methods, else `other`. A client chooses the
/// method it sends (`curl -X XM1`), so taking it as given would let anyone add series
/// without end.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records [`HTTP_REQUESTS`] and [`HTTP_REQUEST_DURATION`]. Every label is bounded: the
/// route is the matched template (`/v1/invoices/{id}`, or `unmatched`), never the raw
/// path; the method one of the standard ones or `other`; the status a code the server
/// chose.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The answer to a request shed because `max` `what` are in flight ([`crate::MAX_IN_FLIGHT`]
/// requests, or [`crate::REGISTRY_MAX_IN_FLIGHT`] for the embedded schema registry).
pub async fn overloaded(max: usize, what: &'static str) -> Response {
    crate::ApiError::Busy(format!(
        "{max} {what} are in flight on this API process; retry shortly"
    ))
    .into_response()
}

/// A path that does not decode to text (bad UTF-8 after percent-decoding) or holds a NUL is
/// refused here, as the API's JSON 400 naming `path`, before a route's extractor sees it
/// (axum's own rejection is plain text; Postgres refuses a NUL with an error of its own).
pub async fn path_guard(req: Request, next: Next) -> Response {
    match percent_encoding::percent_decode_str(req.uri().path()).decode_utf8() {
        Ok(path) if !path.contains('\0') => next.run(req).await,
        _ => crate::ApiError::bad_request("path", "must be UTF-8 text without NUL characters")
            .into_response(),
    }
}

/// A request answered before its body was read to the end (refused for its credentials or
/// its size, shed, timed out) is answered with `Connection: close`. The rest of its body is
/// still on the connection, so the server closes it after the answer; unless the answer says
/// so, a client reuses the connection for its next request and sees it dropped unanswered (a
/// pooled client such as the schema registry clients' then fails a request the server never
/// saw).
pub async fn close_unread(req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(Watched {
            inner,
            read: read.clone(),
        })
    });
    let mut response = next.run(req).await;
    if !read.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
