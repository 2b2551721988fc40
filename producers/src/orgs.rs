//! Organizations (housing societies) and their API keys.
//!
//! A key's secret is shown once, when it is made, and never stored: only its SHA-256 is.
//! Keys are made for the organization's first administrator (`dhanman orgs create`), for an
//! invited user who accepts their invitation ([`crate::users::accept_invitation`]), and by a
//! rotation, which only the key's owner may ask for. Nobody is ever given another person's
//! key. An administrator lists and revokes every key of the organization; other users their
//! own.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::users::{self, NewUser};
use crate::{Caller, Error, Result};

#[derive(Debug, Serialize)]
pub struct CreatedOrganization {
    pub organization_id: Uuid,
    pub name: String,
    /// The administrator the key belongs to.
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub api_key: String,
    pub role: String,
}

/// Whom an API key speaks for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyOwner {
    pub key_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
}

/// A key just made: the only time its secret is seen.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    /// Shown once: only its hash is kept.
    pub api_key: String,
    pub created_at: DateTime<Utc>,
    /// The key a rotation replaced (and revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<Uuid>,
}

/// A key as `GET /v1/keys` shows it: never its secret.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub user_email: String,
    pub user_name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    /// To the minute: a key's use is recorded at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_from: Option<Uuid>,
}

/// The address of an organization's first administrator when none is given.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@society.invalid";

/// 32 random bytes as hex behind `prefix`, so a leaked secret is recognisable in logs and
/// scans (`dhm_` keys, `dhi_` invitation tokens).
pub(crate) fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates an organization with its first administrator (announced as `UserCreated`) and
/// the administrator's key. The key is returned once and never stored.
pub async fn create_organization(
    pool: &PgPool,
    name: &str,
    admin_email: Option<&str>,
) -> Result<CreatedOrganization> {
    let name = crate::input::required_line("name", Some(name), 200)?;
    let mut tx = pool.begin().await?;
    let organization_id = Uuid::now_v7();
    sqlx::query("insert into organizations (id, name) values ($1, $2)")
        .bind(organization_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let caller = Caller {
        organization_id,
        role: "admin".into(),
        user_id: None,
        correlation_id: format!("orgs-create-{organization_id}"),
    };
    let admin = NewUser {
        email: Some(admin_email.unwrap_or(DEFAULT_ADMIN_EMAIL).to_string()),
        name: Some("Administrator".into()),
        role: Some("admin".into()),
    };
    // The one key handed out without an invitation: whoever runs `dhanman orgs create`
    // is the administrator.
    let (user, _) = users::insert_user(&mut tx, &caller, admin).await?;
    let key = insert_key(&mut tx, organization_id, user.user_id, &user.role, None).await?;
    tx.commit().await?;
    Ok(CreatedOrganization {
        organization_id,
        name: name.to_string(),
        user_id: user.user_id,
        key_id: key.key_id,
        api_key: key.api_key,
        role: user.role,
    })
}

/// Makes a key for `user_id`; the caller stores nothing else of it.
pub(crate) async fn insert_key(
    conn: &mut PgConnection,
    organization_id: Uuid,
    user_id: Uuid,
    role: &str,
    rotated_from: Option<Uuid>,
) -> Result<IssuedKey> {
    let key = random_secret("dhm_");
    let key_id = Uuid::now_v7();
    let (created_at,): (DateTime<Utc>,) = sqlx::query_as(
        "insert into api_keys (id, key_hash, organization_id, user_id, role, rotated_from)
         values ($1, $2, $3, $4, $5, $6) returning created_at",
    )
    .bind(key_id)
    .bind(key_hash(&key))
    .bind(organization_id)
    .bind(user_id)
    .bind(role)
    .bind(rotated_from)
    .fetch_one(conn)
    .await?;
    Ok(IssuedKey {
        key_id,
        user_id,
        role: role.to_string(),
        api_key: key,
        created_at,
        rotated_from,
    })
}

/// Whom a key speaks for, if it is one of ours and not revoked. Records its use, at most
/// once a minute per key, so that authenticating stays a read almost always.
pub async fn authenticate(pool: &PgPool, key: &str) -> Result<Option<KeyOwner>> {
    authenticate_hash(pool, &key_hash(key)).await
}

/// [`authenticate`] for a key already hashed with [`key_hash`].
pub async fn authenticate_hash(pool: &PgPool, hash: &[u8]) -> Result<Option<KeyOwner>> {
    let owner = sqlx::query_as(
        "with k as (
             select id, organization_id, user_id, role, last_used_at from api_keys
              where key_hash = $1 and revoked_at is null
         ), used as (
             update api_keys a set last_used_at = now() from k
              where a.id = k.id
                and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute')
         )
         select id as key_id, organization_id, user_id, role from k",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    Ok(owner)
}

const KEY_INFO: &str =
    "select k.id as key_id, k.user_id, u.email as user_email, u.name as user_name,
        k.role, k.created_at, k.last_used_at, k.revoked_at, k.rotated_from
   from api_keys k join users u on u.id = k.user_id";

/// The organization's keys for an administrator; the caller's own for anyone else.
pub async fn list_keys(conn: &mut PgConnection, caller: &Caller) -> Result<Vec<KeyInfo>> {
    let user_id = caller.user("listing API keys")?;
    let everyone = caller.role == "admin";
    let keys = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{KEY_INFO} where k.organization_id = $1 and ($2 or k.user_id = $3)
          order by k.created_at, k.id"
    )))
    .bind(caller.organization_id)
    .bind(everyone)
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(keys)
}

async fn key_info(conn: &mut PgConnection, organization_id: Uuid, id: Uuid) -> Result<KeyInfo> {
    let key: Option<KeyInfo> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{KEY_INFO} where k.id = $1 and k.organization_id = $2"
    )))
    .bind(id)
    .bind(organization_id)
    .fetch_optional(conn)
    .await?;
    key.ok_or(Error::NotFound("API key"))
}

/// Key changes of one organization take turns (the last administrator key is never
/// revoked by two requests racing each other). An advisory lock, not a row lock on the
/// organization, so that nothing else waits for it.
async fn lock_keys(conn: &mut PgConnection, organization_id: Uuid) -> Result<()> {
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended('dhanman-api-keys:' || $1::text, 0))",
    )
    .bind(organization_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes a key: its owner or an administrator may. From the commit on, the key
/// authenticates nothing. Revoking a revoked key changes nothing and answers it again; the
/// organization's last administrator key is not revoked (rotate it instead).
pub async fn revoke_key(conn: &mut PgConnection, caller: &Caller, id: Uuid) -> Result<KeyInfo> {
    let user_id = caller.user("revoking an API key")?;
    lock_keys(conn, caller.organization_id).await?;
    let key = key_info(conn, caller.organization_id, id).await?;
    if key.user_id != user_id {
        caller.require(&["admin"], "revoking another user's API key")?;
    }
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    if key.role == "admin" {
        let (others,): (i64,) = sqlx::query_as(
            "select count(*) from api_keys
              where organization_id = $1 and role = 'admin' and revoked_at is null and id <> $2",
        )
        .bind(caller.organization_id)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        if others == 0 {
            return Err(Error::Conflict(format!(
                "API key {id} is the organization's last administrator key; rotate it instead"
            )));
        }
    }
    sqlx::query("update api_keys set revoked_at = now() where id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    tracing::info!(key_id = %id, owner = %key.user_id, by = %user_id, "API key revoked");
    key_info(conn, caller.organization_id, id).await
}

/// Replaces a key by a new one of the same user and role: only the key's owner may (an
/// administrator revokes other people's keys, and never sees their secrets). The old key is
/// revoked in the same transaction; the new secret is answered once.
pub async fn rotate_key(conn: &mut PgConnection, caller: &Caller, id: Uuid) -> Result<IssuedKey> {
    let user_id = caller.user("rotating an API key")?;
    lock_keys(conn, caller.organization_id).await?;
    let key = key_info(conn, caller.organization_id, id).await?;
    if key.user_id != user_id {
        return Err(Error::Forbidden(format!(
            "only the owner of API key {id} may rotate it; this key belongs to another user \
             (an administrator may revoke it)"
        )));
    }
    if key.revoked_at.is_some() {
        return Err(Error::Conflict(format!("API key {id} is revoked")));
    }
    sqlx::query("update api_keys set revoked_at = now() where id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let issued = insert_key(conn, caller.organization_id, user_id, &key.role, Some(id)).await?;
    tracing::info!(key_id = %issued.key_id, rotated_from = %id, %user_id, "API key rotated");
    Ok(issued)
}
