//! Purchase orders with their approvals, and vendor bills.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use dhanman_producers::Caller;
use dhanman_producers::purchase::{
    self, Bill, Decision, NewBill, NewPurchaseOrder, PurchaseOrderView,
};
use dhanman_producers::users;
use sqlx::PgConnection;

use super::sales::{CommandReply, Gate, run_command};
use crate::extract::{Auth, JsonBody, OptionalJsonBody, path_uuid};
use crate::{ApiError, AppState};

pub async fn submit_order(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewPurchaseOrder>,
) -> Result<CommandReply, ApiError> {
    let policy = state.approval_policy;
    run_command(
        &state,
        &headers,
        &caller,
        Gate::new(users::ROLES, "submitting a purchase order"),
        "/v1/purchase-orders",
        body,
        StatusCode::CREATED,
        async |conn: &mut PgConnection, caller: &Caller, input| {
            purchase::submit_order(conn, caller, input, policy).await
        },
    )
    .await
}

pub async fn approve_order(
    state: State<AppState>,
    auth: Auth,
    path: Path<String>,
    headers: HeaderMap,
    body: OptionalJsonBody<Decision>,
) -> Result<CommandReply, ApiError> {
    decide(state, auth, path, headers, body, true).await
}

pub async fn reject_order(
    state: State<AppState>,
    auth: Auth,
    path: Path<String>,
    headers: HeaderMap,
    body: OptionalJsonBody<Decision>,
) -> Result<CommandReply, ApiError> {
    decide(state, auth, path, headers, body, false).await
}

async fn decide(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<Decision>,
    approve: bool,
) -> Result<CommandReply, ApiError> {
    let po_id = path_uuid(&id, "purchase order")?;
    let verb = if approve { "approve" } else { "reject" };
    run_command(
        &state,
        &headers,
        &caller,
        Gate::new(
            purchase::APPROVER_ROLES,
            if approve {
                "approving a purchase order"
            } else {
                "rejecting a purchase order"
            },
        ),
        &format!("/v1/purchase-orders/{po_id}/{verb}"),
        body,
        StatusCode::OK,
        async |conn: &mut PgConnection, caller: &Caller, input| {
            if approve {
                purchase::approve_order(conn, caller, po_id, input).await
            } else {
                purchase::reject_order(conn, caller, po_id, input).await
            }
        },
    )
    .await
}

pub async fn order(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<PurchaseOrderView>, ApiError> {
    let po_id = path_uuid(&id, "purchase order")?;
    let mut conn = state.pool.acquire().await?;
    purchase::find_order(&mut conn, &caller, po_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("purchase order".into()))
}

pub async fn create_bill(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewBill>,
) -> Result<CommandReply, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("recording a bill"),
        "/v1/bills",
        body,
        StatusCode::CREATED,
        purchase::create_bill,
    )
    .await
}

pub async fn bill(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Bill>, ApiError> {
    let bill_id = path_uuid(&id, "bill")?;
    let mut conn = state.pool.acquire().await?;
    purchase::find_bill(&mut conn, &caller, bill_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("bill".into()))
}
