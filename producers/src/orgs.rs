//! Organizations (housing societies) and their API keys.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::users::{self, NewUser};
use crate::{Caller, Result};
use dhanman_schemas::events::FieldError;

#[derive(Debug, Serialize)]
pub struct CreatedOrganization {
    pub organization_id: Uuid,
    pub name: String,
    /// The administrator the key belongs to.
    pub user_id: Uuid,
    pub api_key: String,
    pub role: String,
}

/// Whom an API key speaks for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyOwner {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
}

/// The address of an organization's first administrator when none is given.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@society.invalid";

/// 32 random bytes as hex, prefixed so a leaked key is recognisable in logs and scans.
fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dhm_{hex}")
}

fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates an organization with its first administrator (announced as `UserCreated`) and
/// the administrator's key. The key is returned once and never stored.
pub async fn create_organization(
    pool: &PgPool,
    name: &str,
    admin_email: Option<&str>,
) -> Result<CreatedOrganization> {
    let name = name.trim();
    if name.is_empty() {
        return Err(FieldError::new("name", "must not be empty").into());
    }
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
    let created = users::insert_user(&mut tx, &caller, admin).await?;
    tx.commit().await?;
    Ok(CreatedOrganization {
        organization_id,
        name: name.to_string(),
        user_id: created.user.user_id,
        api_key: created.api_key,
        role: created.user.role,
    })
}

/// Makes a key for `user_id`; the caller stores nothing else of it.
pub(crate) async fn insert_key(
    conn: &mut sqlx::PgConnection,
    organization_id: Uuid,
    user_id: Uuid,
    role: &str,
) -> Result<String> {
    let key = random_key();
    sqlx::query(
        "insert into api_keys (key_hash, organization_id, user_id, role) values ($1, $2, $3, $4)",
    )
    .bind(key_hash(&key))
    .bind(organization_id)
    .bind(user_id)
    .bind(role)
    .execute(conn)
    .await?;
    Ok(key)
}

/// Whom a key speaks for, if it is one of ours.
pub async fn authenticate(pool: &PgPool, key: &str) -> Result<Option<KeyOwner>> {
    let owner =
        sqlx::query_as("select organization_id, user_id, role from api_keys where key_hash = $1")
            .bind(key_hash(key))
            .fetch_optional(pool)
            .await?;
    Ok(owner)
}
