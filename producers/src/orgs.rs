//! Organizations (housing societies) and their API keys.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use dhanman_schemas::events::FieldError;

#[derive(Debug, Serialize)]
pub struct CreatedOrganization {
    pub organization_id: Uuid,
    pub name: String,
    pub api_key: String,
    pub role: String,
}

/// 32 random bytes as hex, prefixed so a leaked key is recognisable in logs and scans.
fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dhm_{hex}")
}

fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates an organization with an admin key. The key is returned once and never stored.
pub async fn create_organization(pool: &PgPool, name: &str) -> Result<CreatedOrganization> {
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
    let api_key = insert_key(&mut tx, organization_id, "admin").await?;
    tx.commit().await?;
    Ok(CreatedOrganization {
        organization_id,
        name: name.to_string(),
        api_key,
        role: "admin".into(),
    })
}

async fn insert_key(
    conn: &mut sqlx::PgConnection,
    organization_id: Uuid,
    role: &str,
) -> Result<String> {
    let key = random_key();
    sqlx::query("insert into api_keys (key_hash, organization_id, role) values ($1, $2, $3)")
        .bind(key_hash(&key))
        .bind(organization_id)
        .bind(role)
        .execute(conn)
        .await?;
    Ok(key)
}

/// The organization and role of a key, if it is one of ours.
pub async fn authenticate(pool: &PgPool, key: &str) -> Result<Option<(Uuid, String)>> {
    let row: Option<(Uuid, String)> =
        sqlx::query_as("select organization_id, role from api_keys where key_hash = $1")
            .bind(key_hash(key))
            .fetch_optional(pool)
            .await?;
    Ok(row)
}
