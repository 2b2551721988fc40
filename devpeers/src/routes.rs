//! The HTTP surface: `/v1` (the PSP contract), `/healthz`, `/_control` (the switches) and
//! `/_requests` (every `/v1` request received).

use std::io;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::book::Outcome;
use crate::charges::{ChargeRequest, Received, RefundRequest, parse_object};
use crate::faults::{FIELDS, Fault};
use crate::{Error, Gateway, Result};

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Set on an answer that an earlier request under the same key already got.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub(crate) fn router(gateway: Gateway) -> Router {
    let v1 = Router::new()
        .route("/charges", post(create_charge).get(list_charges))
        .route("/charges/{charge_id}", get(get_charge))
        .route("/charges/{charge_id}/refunds", post(create_refund))
        .route("/log", get(log))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            availability,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/_control", get(get_control).put(put_control))
        .route("/_requests", get(requests))
        .fallback(no_route)
        .with_state(gateway)
}

/// Records every `/v1` request as it arrives, then applies `down` and `latency_ms`.
async fn availability(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    let (down, latency_ms) = {
        let mut state = gateway.lock();
        let received = Received {
            seq: state.received.len() as u64 + 1,
            method: request.method().to_string(),
            // The router nested under `/v1` sees the path without it.
            path: format!(
                "/v1{}",
                request
                    .uri()
                    .path_and_query()
                    .map_or(request.uri().path(), |p| p.as_str())
            ),
            idempotency_key: request
                .headers()
                .get(IDEMPOTENCY_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            at: chrono::Utc::now(),
        };
        state.received.push(received);
        let s = &state.faults.switches;
        (s.down, s.latency_ms)
    };
    if down {
        return Error::Unavailable.into_response();
    }
    if latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
    }
    next.run(request).await
}

#[tracing::instrument(skip_all, fields(idempotency_key, reference))]
async fn create_charge(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let key = idempotency_key(&headers)?;
    let request = ChargeRequest::parse(&body)?;
    let span = tracing::Span::current();
    span.record("idempotency_key", key);
    span.record("reference", request.reference.as_str());
    let fault = gateway.decide_fault();
    carry_out(fault, || {
        let mut state = gateway.lock();
        let state = &mut *state;
        let faults = &mut state.faults;
        state.book.charge(key, request, |r| {
            faults.take_decline() || r.is_test_decline()
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(idempotency_key, charge_id = %charge_id))]
async fn create_refund(
    State(gateway): State<Gateway>,
    Path(charge_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let key = idempotency_key(&headers)?;
    let request = RefundRequest::parse(&body)?;
    tracing::Span::current().record("idempotency_key", key);
    let fault = gateway.decide_fault();
    carry_out(fault, || {
        gateway.lock().book.refund(key, &charge_id, request)
    })
    .await
}

/// Runs a money-moving request under its fault: not at all (503, an ambiguous 409, or a
/// hang that ends in a closed connection), or fully, with the answer then lost, replaced
/// by an ambiguous 409, or delivered.
async fn carry_out(fault: Fault, execute: impl FnOnce() -> Result<Outcome>) -> Result<Response> {
    if fault != Fault::None {
        tracing::info!(?fault, "injecting a fault");
    }
    match fault {
        Fault::Unavailable => return Err(Error::Unavailable),
        Fault::Busy => return Err(key_in_use()),
        Fault::Hang(duration) => {
            tokio::time::sleep(duration).await;
            return Ok(dropped_connection());
        }
        Fault::None | Fault::LoseResponse | Fault::Ambiguous => {}
    }
    let outcome = execute();
    match &outcome {
        Ok(o) if o.replayed => tracing::info!(status = %o.status, "replayed the key's answer"),
        Ok(o) => tracing::info!(status = %o.status, "payment carried out"),
        Err(_) => {}
    }
    if fault == Fault::LoseResponse {
        // Whatever the answer was, 201 or 409, the client never hears it.
        return Ok(dropped_connection());
    }
    if fault == Fault::Ambiguous {
        // Done (the key keeps the real answer for replays), but the client hears a 409.
        return Err(key_in_use());
    }
    let outcome = outcome?;
    let mut response = (
        outcome.status,
        [(header::CONTENT_TYPE, "application/json")],
        outcome.body,
    )
        .into_response();
    if outcome.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The 409 of `ambiguous_next` and `busy_next`: the same for both, so the answer does not
/// tell whether anything was done.
fn key_in_use() -> Error {
    Error::conflict(
        Some("Idempotency-Key"),
        "a request with this Idempotency-Key is in progress or conflicts with one \
         already handled",
    )
}

/// A response the client never receives. Its body fails on the first read, so hyper
/// aborts the connection before it has flushed even the status line: the client sees the
/// connection closed with no response, the way a response lost in the network looks.
fn dropped_connection() -> Response {
    let body = futures_util::stream::iter([Err::<Bytes, _>(io::Error::other(
        "response dropped on purpose by a fault switch",
    ))]);
    // 500 in case a future hyper does flush the head first: still no success.
    (StatusCode::INTERNAL_SERVER_ERROR, Body::from_stream(body)).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<&str> {
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        Error::bad_request(
            IDEMPOTENCY_KEY,
            "the Idempotency-Key header is required: a unique key per payment, \
             the same key on every retry of it",
        )
    })?;
    value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| Error::bad_request(IDEMPOTENCY_KEY, "must be 1 to 255 visible characters"))
}

async fn get_charge(
    State(gateway): State<Gateway>,
    Path(charge_id): Path<String>,
) -> Result<Response> {
    let state = gateway.lock();
    let charge = state
        .book
        .charge_by_id(&charge_id)
        .ok_or_else(|| Error::NotFound(format!("charge {charge_id}")))?;
    Ok(Json(charge).into_response())
}

#[derive(Deserialize)]
struct ChargesQuery {
    reference: Option<String>,
    /// The charge made under this key, if any: how a client learns what an ambiguous
    /// answer hid.
    idempotency_key: Option<String>,
}

async fn list_charges(
    State(gateway): State<Gateway>,
    Query(query): Query<ChargesQuery>,
) -> Response {
    let charges = gateway
        .lock()
        .book
        .charges(query.reference.as_deref(), query.idempotency_key.as_deref());
    Json(json!({ "charges": charges })).into_response()
}

async fn log(State(gateway): State<Gateway>) -> Response {
    Json(json!({ "entries": gateway.log() })).into_response()
}

async fn requests(State(gateway): State<Gateway>) -> Response {
    Json(json!({ "requests": gateway.received() })).into_response()
}

async fn healthz(State(gateway): State<Gateway>) -> Response {
    if gateway.switches().down {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "down"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn get_control(State(gateway): State<Gateway>) -> Response {
    Json(gateway.switches()).into_response()
}

async fn put_control(State(gateway): State<Gateway>, body: Bytes) -> Result<Response> {
    let patch = parse_object(&body, FIELDS)?;
    let switches = {
        let mut state = gateway.lock();
        state.faults.apply(patch)?;
        state.faults.switches.clone()
    };
    tracing::info!(?switches, "switches changed");
    Ok(Json(switches).into_response())
}

async fn no_route(request: Request) -> Error {
    Error::NotFound(format!(
        "endpoint {} {}",
        request.method(),
        request.uri().path()
    ))
}
