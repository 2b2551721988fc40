//! `Idempotency-Key`: a retried command gets its first response back and changes nothing;
//! the same key with a different body is a conflict.
//!
//! Keys are scoped to (organization, user, key): another user who sends the same key
//! neither gets this user's response nor a conflict. The API checks the caller's role
//! before it runs a command, so a stored response is never served to a caller who may not
//! run the command.
//!
//! The key is recorded, with the response, by the last statement of the command's
//! transaction ([`record`]). A concurrent retry runs its command too, then blocks on the
//! key's primary key until the first transaction ends: if that one committed, the retry's
//! transaction is rolled back and the first response is answered ([`earlier`]); two
//! identical requests never both take effect. A retry whose command fails (its invoice
//! number now taken by the first) is answered the first response as well.
//!
//! A command whose writes are one statement records the key in that statement
//! ([`Recording`]) and runs without a transaction: a retry's statement fails on the key's
//! primary key ([`taken`]) and the first response is answered the same way.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Error, Result};

/// The user of keys stored before keys were scoped to users (no user has it).
pub const LEGACY_USER: Uuid = Uuid::nil();

/// A key as a request names it: whose, which, and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Key {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// A key and the status its response gets, for a command that records the key in its own
/// single statement (no transaction; see [`crate::sales::write_prepared`]).
#[derive(Clone, Copy)]
pub struct Recording<'a> {
    pub key: &'a Key,
    pub status: u16,
}

/// The key's primary key: a statement that records a key fails on it when a request with
/// the same key committed meanwhile ([`taken`]; answer [`earlier`]).
pub const PRIMARY_KEY: &str = "idempotency_keys_pkey";

/// A key recorded meanwhile by a request running at the same time.
pub fn taken() -> Error {
    Error::Conflict("Idempotency-Key was taken by a request running at the same time".into())
}

/// What an earlier use of the key answered.
pub struct Replay {
    pub status: u16,
    /// The response's JSON text, as it was answered.
    pub body: String,
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

/// Records the key with the command's response (its JSON text), in the command's
/// transaction. `false`: the key was used before (committed meanwhile, or stored before
/// keys had users); roll the transaction back and answer [`earlier`].
pub async fn record(conn: &mut PgConnection, key: &Key, status: u16, body: &str) -> Result<bool> {
    // The column is `json`, kept as the text written: bound as text, not as `jsonb`.
    let inserted = sqlx::query(
        "insert into idempotency_keys
             (organization_id, user_id, idempotency_key, request_hash, response_status, response_body)
         select $1, $2, $3, $4, $5, $6::json
          where not exists (select 1 from idempotency_keys
                             where organization_id = $1 and user_id = $7 and idempotency_key = $3)
         on conflict do nothing",
    )
    .bind(key.organization_id)
    .bind(key.user_id)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(i32::from(status))
    .bind(body)
    .bind(LEGACY_USER)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The response an earlier use of the key got, if it was used: `Err(Conflict)` when it came
/// with another request, or before keys were scoped to users (neither replayed nor run
/// again).
pub async fn earlier(pool: &PgPool, key: &Key) -> Result<Option<Replay>> {
    let stored: Vec<(Uuid, Vec<u8>, i32, String)> = sqlx::query_as(
        "select user_id, request_hash, response_status, response_body::text from idempotency_keys
          where organization_id = $1 and user_id in ($2, $3) and idempotency_key = $4",
    )
    .bind(key.organization_id)
    .bind(key.user_id)
    .bind(LEGACY_USER)
    .bind(&key.key)
    .fetch_all(pool)
    .await?;
    if stored.iter().any(|(user, ..)| *user == LEGACY_USER) {
        return Err(Error::Conflict(
            "Idempotency-Key was used before keys were scoped to users; use a new key".into(),
        ));
    }
    let Some((_, hash, status, body)) = stored.into_iter().next() else {
        return Ok(None);
    };
    if hash != key.request_hash {
        return Err(Error::Conflict(
            "Idempotency-Key was already used with a different request".into(),
        ));
    }
    Ok(Some(Replay {
        status: status as u16,
        body,
    }))
}
