use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (status, mut body) = match sqlx::query_scalar!("select 1").fetch_one(&state.pool).await {
        Ok(_) => (StatusCode::OK, json!({"status": "ready", "database": "up"})),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "database": e.to_string()}),
        ),
    };
    // An open breaker leaves the API ready: only payments through the gateway fail fast.
    if let Some(payments) = &state.payments {
        let breaker = payments.gateway().breaker_state();
        body["payment_gateway"] = json!(breaker.as_str());
        if breaker != dhanman_payments::BreakerState::Closed {
            body["payments"] = json!(
                "gateway payments fail fast until the breaker closes; everything else is served"
            );
        }
    }
    // Reported, never a reason to be unready: readiness is about serving, and the books'
    // violations are the audit's gauge and `dhanman audit` to act on.
    if let Some(ledger_audit) = &state.ledger_audit {
        body["ledger_audit"] = ledger_audit().await;
    }
    (status, Json(body))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}
