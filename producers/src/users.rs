//! Users of an organization and their API keys. Each user has one role; each key belongs
//! to one user, so a command knows who asked. `UserCreated` announces a user to every
//! context, whose users projection (`user_directory`) is what they read.

use chrono::{DateTime, Utc};
use dhanman_schemas::events::{Envelope, FieldError, UserCreated};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Caller, Error, Result, outbox};

/// Roles a user (and so a key) can have.
pub const ROLES: &[&str] = &["admin", "accountant", "approver", "manager", "cfo"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: User,
    /// Shown once: only its hash is kept.
    pub api_key: String,
    /// The `UserCreated` event's id.
    pub consistency_token: Uuid,
}

/// Creates a user with a key of the user's role; only an administrator may.
pub async fn create_user(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewUser,
) -> Result<CreatedUser> {
    caller.require(&["admin"], "creating a user")?;
    insert_user(conn, caller, input).await
}

pub(crate) async fn insert_user(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewUser,
) -> Result<CreatedUser> {
    let email = input
        .email
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| FieldError::new("email", "is required"))?;
    crate::input::check_email("email", email)?;
    let name = match input.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() && n.chars().count() <= 200 => n,
        Some(n) if !n.is_empty() => {
            return Err(FieldError::new("name", "must be at most 200 characters").into());
        }
        _ => return Err(FieldError::new("name", "is required").into()),
    };
    let role = input
        .role
        .as_deref()
        .ok_or_else(|| FieldError::new("role", "is required"))?;
    if !ROLES.contains(&role) {
        return Err(FieldError::new("role", format!("must be one of {}", ROLES.join(", "))).into());
    }

    let user_id = Uuid::now_v7();
    let inserted: Result<User, sqlx::Error> = sqlx::query_as(
        "insert into users (id, organization_id, email, name, role) values ($1, $2, $3, $4, $5)
         returning id as user_id, email, name, role, created_at",
    )
    .bind(user_id)
    .bind(caller.organization_id)
    .bind(email)
    .bind(name)
    .bind(role)
    .fetch_one(&mut *conn)
    .await;
    let user = match inserted {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("users_org_email") => {
            return Err(Error::Conflict(format!(
                "a user with the email {email} already exists"
            )));
        }
        other => other?,
    };
    let api_key =
        crate::orgs::insert_key(conn, caller.organization_id, user_id, &user.role).await?;
    let event = UserCreated {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        user_id,
        email: user.email.clone(),
        name: user.name.clone(),
        role: user.role.clone(),
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%user_id, role = %user.role, event_id = %consistency_token, "user created");
    Ok(CreatedUser {
        user,
        api_key,
        consistency_token,
    })
}

/// A user as the users projection knows them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DirectoryEntry {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
}

/// The organization's users from the projection, optionally of one role.
pub async fn directory(
    conn: &mut PgConnection,
    organization_id: Uuid,
    role: Option<&str>,
) -> Result<Vec<DirectoryEntry>> {
    let users = sqlx::query_as(
        "select user_id, email, name, role from user_directory
          where organization_id = $1 and ($2::text is null or role = $2)
          order by name, user_id",
    )
    .bind(organization_id)
    .bind(role)
    .fetch_all(conn)
    .await?;
    Ok(users)
}

/// One user of the caller's organization from the projection.
pub async fn find_user(
    conn: &mut PgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<DirectoryEntry>> {
    let user = sqlx::query_as(
        "select user_id, email, name, role from user_directory
          where user_id = $1 and organization_id = $2",
    )
    .bind(id)
    .bind(caller.organization_id)
    .fetch_optional(conn)
    .await?;
    Ok(user)
}
