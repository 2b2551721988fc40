//! Users and their keys; the directory is the users projection.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dhanman_producers::users::{self, DirectoryEntry, NewUser};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::consistency::wait_for;
use crate::extract::{Auth, JsonBody, Params, path_uuid};
use crate::{ApiError, AppState};

/// Creates a user and returns the user's API key, once. No `Idempotency-Key` here: the
/// stored reply would keep the key; a retry is answered 409 by the email instead.
pub async fn create_user(
    State(state): State<AppState>,
    Auth(caller): Auth,
    body: JsonBody<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = state.pool.begin().await?;
    let created = users::create_user(&mut tx, &caller, body.value).await?;
    tx.commit().await?;
    let body = serde_json::to_value(&created).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    pub role: Option<String>,
    pub consistent_with: Option<String>,
}

/// The organization's users as every context sees them (the users projection).
pub async fn directory(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<DirectoryQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(role) = q.role.as_deref().filter(|r| !users::ROLES.contains(r)) {
        return Err(ApiError::validation(
            "role",
            format!("{role:?} is not one of {}", users::ROLES.join(", ")),
        ));
    }
    wait_for(&state, "users", q.consistent_with.as_deref()).await?;
    let mut conn = state.pool.acquire().await?;
    let users = users::directory(&mut conn, caller.organization_id, q.role.as_deref()).await?;
    Ok(Json(json!({ "users": users })))
}

pub async fn user(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<super::ledger::Consistent>,
) -> Result<Json<DirectoryEntry>, ApiError> {
    let user_id = path_uuid(&id, "user")?;
    wait_for(&state, "users", q.consistent_with.as_deref()).await?;
    let mut conn = state.pool.acquire().await?;
    users::find_user(&mut conn, &caller, user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("user".into()))
}
