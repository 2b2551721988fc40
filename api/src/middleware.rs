//! Correlation ids: accepted from `X-Correlation-Id` or created, returned on the response,
//! and a field of the span every log line of the request runs in. The W3C `traceparent`
//! likewise: a well-formed one is continued (this request is a child span of it), a
//! missing or malformed one starts a new trace; outbox rows the request writes carry it.
//! And the HTTP server's metrics, by route template; a connection closed, saying so, after
//! a request answered before its body was read; and a JSON body for the errors the layers
//! beneath the routes answer without one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dhanman_plumbing::trace::{self, TraceParent};
use serde_json::json;
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

/// An error answered without a body by the layers beneath the routes (a method the route
/// does not take, 405, with its `Allow`; the request's time run out, 408) gets the JSON
/// body every other refusal has: what went wrong, and the part of the request at fault.
pub async fn explain_bare_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return response;
    }
    let (error, message, field) = match status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = response
                .headers()
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            (
                "method_not_allowed",
                format!("{method} is not allowed here; allowed: {allowed}"),
                Some("method"),
            )
        }
        axum::http::StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            format!(
                "the request took longer than {} s (its body, or a wait for consistency)",
                crate::REQUEST_TIMEOUT.as_secs()
            ),
            None,
        ),
        other => {
            let reason = other.canonical_reason().unwrap_or("error");
            let code: String = reason
                .chars()
                .map(|c| match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' => c.to_ascii_lowercase(),
                    _ => '_',
                })
                .collect();
            return with_json_body(response, json!({"error": code, "message": reason}));
        }
    };
    let mut body = json!({"error": error, "message": message});
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    with_json_body(response, body)
}

/// `response` with `body` (JSON) in place of its empty one, its status and headers kept.
fn with_json_body(response: Response, body: serde_json::Value) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    /// What `explain_bare_errors` answers for a route that answers `status`, with
    /// `content_type` (or none) and `body`, and a header of its own that must be kept.
    async fn explained(
        status: StatusCode,
        content_type: Option<&'static str>,
        body: &'static str,
    ) -> (StatusCode, Option<String>, String) {
        let router = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || async move {
                    let mut response = (status, body).into_response();
                    match content_type {
                        Some(t) => {
                            response.headers_mut().insert(
                                axum::http::header::CONTENT_TYPE,
                                HeaderValue::from_static(t),
                            );
                        }
                        None => {
                            response
                                .headers_mut()
                                .remove(axum::http::header::CONTENT_TYPE);
                        }
                    }
                    response
                        .headers_mut()
                        .insert("x-kept", HeaderValue::from_static("yes"));
                    response
                }),
            )
            .layer(axum::middleware::from_fn(explain_bare_errors));
        let request = Request::builder()
            .uri("/")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-kept"], "yes", "headers kept");
        let status = response.status();
        let content_type = response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn an_error_without_a_body_gets_one_in_json_and_nothing_else_changes() {
        let (status, content_type, body) = explained(StatusCode::REQUEST_TIMEOUT, None, "").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "request_timeout");
        assert!(body["message"].as_str().unwrap().contains("30 s"), "{body}");

        let (_, _, body) = explained(StatusCode::IM_A_TEAPOT, None, "").await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&body["error"], &body["message"]),
            (&json!("i_m_a_teapot"), &json!("I'm a teapot"))
        );

        // An answer that has its body, or is no error, passes as it is.
        let json = explained(StatusCode::CONFLICT, Some("application/json"), "{\"a\":1}").await;
        assert_eq!(json.2, "{\"a\":1}");
        let fine = explained(StatusCode::OK, None, "").await;
        assert_eq!(
            (fine.0, fine.1, fine.2.as_str()),
            (StatusCode::OK, None, "")
        );
    }
}
