//! `Idempotency-Key`: a retried command gets its first response back and changes nothing;
//! the same key with a different body is a conflict.
//!
//! Keys are scoped to (organization, user, key): another user who sends the same key
//! neither gets this user's response nor a conflict. The API checks the caller's role
//! before it claims a key, so a stored response is never served to a caller who may not
//! run the command.
//!
//! The key is claimed inside the command's transaction. A concurrent retry blocks on the
//! primary key until the first transaction ends, then sees its stored response: two
//! identical requests never both execute.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Error, Result};

/// The user of keys stored before keys were scoped to users (no user has it).
pub const LEGACY_USER: Uuid = Uuid::nil();

pub enum Claim {
    /// First use of the key: run the command, then [`store`] its response.
    New,
    /// The key was used with the same request: here is the response it got.
    Replay { status: u16, body: Json },
}

pub fn request_hash(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().to_vec()
}

pub async fn claim(
    conn: &mut PgConnection,
    organization_id: Uuid,
    user_id: Uuid,
    key: &str,
    hash: &[u8],
) -> Result<Claim> {
    let inserted = sqlx::query(
        "insert into idempotency_keys
             (organization_id, user_id, idempotency_key, request_hash, response_status, response_body)
         values ($1, $2, $3, $4, 0, 'null') on conflict do nothing",
    )
    .bind(organization_id)
    .bind(user_id)
    .bind(key)
    .bind(hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        // A key stored before keys had users may be this user's retry, or someone else's:
        // neither replayed nor executed again.
        let (legacy,): (bool,) = sqlx::query_as(
            "select exists (select 1 from idempotency_keys
                             where organization_id = $1 and user_id = $2 and idempotency_key = $3)",
        )
        .bind(organization_id)
        .bind(LEGACY_USER)
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
        if legacy {
            return Err(Error::Conflict(
                "Idempotency-Key was used before keys were scoped to users; use a new key".into(),
            ));
        }
        return Ok(Claim::New);
    }
    let (stored_hash, status, body): (Vec<u8>, i32, Json) = sqlx::query_as(
        "select request_hash, response_status, response_body from idempotency_keys
          where organization_id = $1 and user_id = $2 and idempotency_key = $3",
    )
    .bind(organization_id)
    .bind(user_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if stored_hash != hash {
        return Err(Error::Conflict(
            "Idempotency-Key was already used with a different request".into(),
        ));
    }
    Ok(Claim::Replay {
        status: status as u16,
        body,
    })
}

pub async fn store(
    conn: &mut PgConnection,
    organization_id: Uuid,
    user_id: Uuid,
    key: &str,
    status: u16,
    body: &Json,
) -> Result<()> {
    sqlx::query(
        "update idempotency_keys set response_status = $4, response_body = $5
          where organization_id = $1 and user_id = $2 and idempotency_key = $3",
    )
    .bind(organization_id)
    .bind(user_id)
    .bind(key)
    .bind(i32::from(status))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}
