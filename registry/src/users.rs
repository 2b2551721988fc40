//! The registry's users: who may change it. A user is a name and a secret; the secret is
//! shown once when the user is made and only its SHA-256 is stored. Clients send both as
//! HTTP basic auth (`basic.auth.user.info=name:secret` in Confluent's clients).

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::{Error, Result};

/// A user as listed (the secret is never shown again).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// Makes user `name` (or gives a revoked one a new secret) and returns the secret, in
/// `name:secret` form, as clients are configured with it.
pub async fn add(pool: &PgPool, name: &str) -> Result<String> {
    if !valid_name(name) {
        return Err(Error::UnprocessableEntity(
            "a registry user's name is 1 to 64 letters, digits, '.', '_', '@' or '-'".into(),
        ));
    }
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("dhr_{secret}");
    let added = sqlx::query(
        "insert into schema_registry_users (name, secret_hash) values ($1, $2)
         on conflict (name) do update set secret_hash = excluded.secret_hash, revoked_at = null
          where schema_registry_users.revoked_at is not null",
    )
    .bind(name)
    .bind(hash(&secret))
    .execute(pool)
    .await?;
    if added.rows_affected() == 0 {
        return Err(Error::OperationNotPermitted(format!(
            "registry user {name} exists; revoke it first to give it a new secret"
        )));
    }
    Ok(format!("{name}:{secret}"))
}

pub async fn list(pool: &PgPool) -> Result<Vec<User>> {
    Ok(sqlx::query_as(
        "select name, created_at, revoked_at from schema_registry_users order by name",
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes user `name`; whether there was an active one.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<bool> {
    let done = sqlx::query(
        "update schema_registry_users set revoked_at = now()
          where name = $1 and revoked_at is null",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `name:secret` is an active user's.
pub async fn verify(pool: &PgPool, name: &str, secret: &str) -> Result<bool> {
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "select secret_hash from schema_registry_users where name = $1 and revoked_at is null",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(stored.is_some_and(|stored| stored == hash(secret)))
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["relay", "ci@example.org", "svc-1.prod"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a b", "a:b", "ünï", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
