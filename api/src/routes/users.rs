//! Users, their invitations and their API keys; the directory is the users projection.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dhanman_producers::orgs::{self, IssuedKey, KeyInfo};
use dhanman_producers::users::{self, AcceptInvitation, DirectoryEntry, NewUser};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::consistency::wait_for;
use crate::extract::{Auth, JsonBody, Params, path_uuid};
use crate::page::PageRequest;
use crate::{ApiError, AppState};

/// Creates a user and their invitation; the answer holds no key (the invited person gets
/// theirs by accepting the invitation, whose token only their welcome email carries). No
/// `Idempotency-Key` here: a retry is answered 409 by the email.
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

/// `POST /v1/invitations/accept`: no API key, the token is the credential. Answers the
/// invited user's first key, once. No `Idempotency-Key`: the stored reply would keep the
/// key.
pub async fn accept_invitation(
    State(state): State<AppState>,
    body: JsonBody<AcceptInvitation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = state.pool.begin().await?;
    let accepted = users::accept_invitation(&mut tx, body.value).await?;
    tx.commit().await?;
    let body = serde_json::to_value(&accepted).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /v1/keys`: every key of the organization for an administrator, the caller's own
/// for anyone else; never a secret.
pub async fn keys(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<Value>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let keys = orgs::list_keys(&mut conn, &caller).await?;
    Ok(Json(json!({ "keys": keys })))
}

/// `POST /v1/keys/{id}/revoke`: the key's owner or an administrator.
pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    let key_id = path_uuid(&id, "API key")?;
    let mut tx = state.pool.begin().await?;
    let key = orgs::revoke_key(&mut tx, &caller, key_id).await?;
    tx.commit().await?;
    state.keys.forget();
    Ok(Json(key))
}

/// `POST /v1/keys/{id}/rotate`: only the key's owner; the new secret is answered once and
/// the old key is revoked in the same transaction. No `Idempotency-Key`, as for every
/// answer that holds a secret.
pub async fn rotate_key(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let key_id = path_uuid(&id, "API key")?;
    let mut tx = state.pool.begin().await?;
    let key = orgs::rotate_key(&mut tx, &caller, key_id).await?;
    tx.commit().await?;
    state.keys.forget();
    Ok((StatusCode::CREATED, Json(key)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    pub role: Option<String>,
    pub consistent_with: Option<String>,
    pub limit: Option<String>,
    pub after: Option<String>,
}

/// The organization's users as every context sees them (the users projection), by name, a
/// page at a time.
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
    let page = PageRequest::<(String, Uuid)>::parse(q.limit.as_deref(), q.after.as_deref())?;
    wait_for(&state, "users", q.consistent_with.as_deref()).await?;
    let mut conn = state.pool.acquire().await?;
    let mut users = users::directory(
        &mut conn,
        caller.organization_id,
        q.role.as_deref(),
        page.after.clone(),
        page.fetch(),
    )
    .await?;
    let next = page.finish(&mut users, |u| (u.name.clone(), u.user_id));
    Ok(Json(json!({ "users": users, "next": next })))
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
