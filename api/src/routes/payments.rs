//! Payments through the gateway: the saga (`dhanman-payments`) behind `POST /v1/payments`,
//! and its state with every step behind `GET /v1/payments/{id}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dhanman_payments::{Error as SagaError, NewPayment, PaymentRequest, PaymentView, Payments};
use dhanman_producers::idempotency;
use serde_json::json;

use super::sales::idempotency_key;
use crate::extract::{Auth, JsonBody, path_uuid};
use crate::{ApiError, AppState};

const PATH: &str = "/v1/payments";

fn saga(state: &AppState) -> Result<&Payments, ApiError> {
    state
        .payments
        .as_ref()
        .ok_or_else(|| ApiError::internal("the payment saga is not configured in this process"))
}

/// 201 completed; 402 declined (`PaymentFailed`, no ledger change); 409 compensated (the
/// invoice could not be paid any more: refunded); 503 with `Retry-After` when the gateway
/// could not be reached (the saga, if one was recorded, is resumed by recovery or by a
/// retry with the same `Idempotency-Key`).
pub async fn create_payment(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewPayment>,
) -> Result<Response, ApiError> {
    caller.require(dhanman_producers::BOOKKEEPERS, "taking a payment")?;
    let payments = saga(&state)?;
    let key = idempotency_key(&headers)?.ok_or_else(|| {
        ApiError::bad_request(
            "Idempotency-Key",
            "is required: a unique key per payment, the same key on every retry of it",
        )
    })?;
    let request = PaymentRequest {
        organization_id: caller.organization_id,
        user_id: caller.user_id.unwrap_or_default(),
        correlation_id: caller.correlation_id.clone(),
        request_hash: idempotency::request_hash("POST", PATH, &body.bytes),
        idempotency_key: key,
        input: body.value,
    };
    match payments.pay(request).await {
        Ok(view) => Ok(outcome(payments, view)),
        Err(SagaError::GatewayUnavailable(wait)) => Ok(unavailable(
            wait,
            json!({
                "error": "gateway_unavailable",
                "message": "the payment gateway is failing; nothing was charged or recorded",
            }),
        )),
        Err(SagaError::Command(e)) => Err(e.into()),
        Err(SagaError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

fn outcome(payments: &Payments, view: PaymentView) -> Response {
    let state = view.state.clone();
    let reason = view.failure_reason.clone().unwrap_or_default();
    let mut body = match serde_json::to_value(&view) {
        Ok(body) => body,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    match state.as_str() {
        "completed" => (StatusCode::CREATED, Json(body)).into_response(),
        "failed" => {
            body["error"] = json!("payment_failed");
            body["message"] = json!(reason);
            (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response()
        }
        "compensated" => {
            body["error"] = json!("conflict");
            body["message"] = json!(reason);
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        _ => {
            body["error"] = json!("gateway_unavailable");
            body["message"] = json!(
                "the payment gateway did not confirm the charge; the payment is resumed \
                 automatically, or retry with the same Idempotency-Key"
            );
            unavailable(payments.retry_after(), body)
        }
    }
}

fn unavailable(wait: Duration, body: serde_json::Value) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

pub async fn payment(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let payment_id = path_uuid(&id, "payment")?;
    match saga(&state)?.find(caller.organization_id, payment_id).await {
        Ok(Some(view)) => Ok(Json(view)),
        Ok(None) => Err(ApiError::NotFound("payment".into())),
        Err(SagaError::Command(e)) => Err(e.into()),
        Err(e) => Err(ApiError::internal(e)),
    }
}
