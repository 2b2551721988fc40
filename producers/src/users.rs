//! Users of an organization and their invitations. Each user has one role; each key belongs
//! to one user, so a command knows who asked. `UserCreated` announces a user to every
//! context, whose users projection (`user_directory`) is what they read.
//!
//! The administrator who creates a user never holds the user's key: the user is created
//! with an invitation, whose one-time token travels only to the user's mailbox (the
//! welcome email of `UserCreated`), and the invited person exchanges the token for their
//! first key ([`accept_invitation`]). The token is never in the event (so never on Kafka):
//! the database keeps its SHA-256 in `invitations`, and the raw token only in a short-lived
//! `invitation_emails` row that the notifier reads to render the email and that is deleted
//! when the email is recorded as sent, or when the invitation is accepted (which blanks the
//! delivery log's copy itself if that comes first).

use chrono::{DateTime, Duration, Utc};
use dhanman_plumbing::outbox;
use dhanman_schemas::events::{Envelope, FieldError, UserCreated};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::orgs::IssuedKey;
use crate::{Caller, Error, Result};

/// Roles a user (and so a key) can have.
pub use dhanman_schemas::events::USER_ROLES as ROLES;

#[derive(Debug, Clone, Deserialize)]
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

/// How long an invitation may be accepted.
pub const INVITATION_TTL: Duration = Duration::days(7);

/// An invitation as its creator sees it: never its token.
#[derive(Debug, Serialize)]
pub struct Invitation {
    pub invitation_id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// How the token reaches the invited person: `email` (the welcome email).
    pub delivery: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: User,
    /// The user's key is not here: the invited person gets it by accepting this.
    pub invitation: Invitation,
    /// The `UserCreated` event's id.
    pub consistency_token: Uuid,
}

/// Creates a user and their invitation; only an administrator may. The user has no key
/// until they accept the invitation.
pub async fn create_user(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewUser,
) -> Result<CreatedUser> {
    caller.require(&["admin"], "creating a user")?;
    let (user, consistency_token) = insert_user(conn, caller, input).await?;
    let invitation = invite(conn, caller, &user, consistency_token).await?;
    Ok(CreatedUser {
        user,
        invitation,
        consistency_token,
    })
}

/// Writes the invitation (the token's hash) and the row that hands the raw token to the
/// welcome email of `event_id`.
async fn invite(
    conn: &mut PgConnection,
    caller: &Caller,
    user: &User,
    event_id: Uuid,
) -> Result<Invitation> {
    // Tokens of invitations that expired before their email went out are of no use.
    sqlx::query("delete from invitation_emails where expires_at < now()")
        .execute(&mut *conn)
        .await?;
    let token = crate::orgs::random_secret("dhi_");
    let invitation_id = Uuid::now_v7();
    let (expires_at,): (DateTime<Utc>,) = sqlx::query_as(
        "insert into invitations (id, organization_id, user_id, created_by, token_hash, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         returning expires_at",
    )
    .bind(invitation_id)
    .bind(caller.organization_id)
    .bind(user.user_id)
    .bind(caller.user_id)
    .bind(crate::orgs::key_hash(&token))
    .bind(INVITATION_TTL.num_seconds() as f64)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "insert into invitation_emails (event_id, invitation_id, token, expires_at)
         values ($1, $2, $3, $4)",
    )
    .bind(event_id)
    .bind(invitation_id)
    .bind(&token)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    tracing::info!(%invitation_id, user_id = %user.user_id, %expires_at, "invitation created");
    Ok(Invitation {
        invitation_id,
        expires_at,
        delivery: "email",
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    pub token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AcceptedInvitation {
    pub invitation_id: Uuid,
    pub organization_id: Uuid,
    #[serde(flatten)]
    pub key: IssuedKey,
}

/// An invitation found by its token.
#[derive(sqlx::FromRow)]
struct Pending {
    invitation_id: Uuid,
    organization_id: Uuid,
    user_id: Uuid,
    role: String,
    expired: bool,
    accepted_at: Option<DateTime<Utc>>,
}

/// Exchanges an invitation's token for the invited user's first key, once. Needs no key:
/// the token is the credential. An unknown, expired or already accepted token is refused
/// naming `token`.
pub async fn accept_invitation(
    conn: &mut PgConnection,
    input: AcceptInvitation,
) -> Result<AcceptedInvitation> {
    let token = input
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| FieldError::new("token", "is required"))?;
    // The row lock makes two acceptances of one token take turns: one key, once.
    let found: Option<Pending> = sqlx::query_as(
        "select i.id as invitation_id, i.organization_id, i.user_id, u.role,
                i.expires_at <= now() as expired, i.accepted_at
           from invitations i join users u on u.id = i.user_id
          where i.token_hash = $1
            for update of i",
    )
    .bind(crate::orgs::key_hash(token))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(Pending {
        invitation_id,
        organization_id,
        user_id,
        role,
        expired,
        accepted_at,
    }) = found
    else {
        return Err(FieldError::new("token", "is not an invitation of this service").into());
    };
    if let Some(at) = accepted_at {
        return Err(FieldError::new(
            "token",
            format!("was already accepted at {at}; its key was shown then"),
        )
        .into());
    }
    if expired {
        return Err(FieldError::new(
            "token",
            "has expired; ask an administrator of your organization",
        )
        .into());
    }
    let key = crate::orgs::insert_key(conn, organization_id, user_id, &role, None).await?;
    sqlx::query("update invitations set accepted_at = now(), key_id = $2 where id = $1")
        .bind(invitation_id)
        .bind(key.key_id)
        .execute(&mut *conn)
        .await?;
    // Accepted: whatever copy of the token is still waiting for the email is of no use.
    // The welcome may be sent but not yet recorded as sent (the invited person read it
    // first): its logged copy is blanked here, since the trigger that blanks it when the
    // email is recorded finds the token gone. The delivery row is locked before the token's
    // row, in the order the notifier's recording locks them.
    sqlx::query(
        "update notification_deliveries d
            set body_text = replace(d.body_text, e.token, '[removed once sent]'),
                body_html = replace(d.body_html, e.token, '[removed once sent]')
           from invitation_emails e
          where e.invitation_id = $1 and d.event_id = e.event_id and d.template = 'welcome'",
    )
    .bind(invitation_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("delete from invitation_emails where invitation_id = $1")
        .bind(invitation_id)
        .execute(&mut *conn)
        .await?;
    tracing::info!(%invitation_id, %user_id, key_id = %key.key_id, "invitation accepted");
    Ok(AcceptedInvitation {
        invitation_id,
        organization_id,
        key,
    })
}

/// Inserts a user and its `UserCreated`; returns the user and the event's id. No key and
/// no invitation: the caller decides how the user gets a key.
pub(crate) async fn insert_user(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewUser,
) -> Result<(User, Uuid)> {
    insert_user_with_id(conn, caller, input, Uuid::now_v7()).await
}

/// [`insert_user`] under an id the caller chose: a user announced by another system keeps
/// its id, and gets neither a key nor an invitation here (they sign in there).
pub async fn insert_user_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewUser,
    user_id: Uuid,
) -> Result<(User, Uuid)> {
    let email = input
        .email
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| FieldError::new("email", "is required"))?;
    crate::input::check_email("email", email)?;
    let name = crate::input::required_line("name", input.name.as_deref(), 200)?;
    let role = input
        .role
        .as_deref()
        .ok_or_else(|| FieldError::new("role", "is required"))?;
    if !ROLES.contains(&role) {
        return Err(FieldError::new("role", format!("must be one of {}", ROLES.join(", "))).into());
    }

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
    let event = UserCreated {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        user_id,
        email: user.email.clone(),
        name: user.name.clone(),
        role: user.role.clone(),
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%user_id, role = %user.role, event_id = %consistency_token, "user created");
    Ok((user, consistency_token))
}

/// A user as the users projection knows them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DirectoryEntry {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
}

/// The organization's users from the projection, optionally of one role, by name: at most
/// `limit` of them, those after `after` (a name and user id) when given.
pub async fn directory(
    conn: &mut PgConnection,
    organization_id: Uuid,
    role: Option<&str>,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<DirectoryEntry>> {
    let (after_name, after_id) = after.unzip();
    let users = sqlx::query_as(
        "select user_id, email, name, role from user_directory
          where organization_id = $1 and ($2::text is null or role = $2)
            and ($3::text is null or (name, user_id) > ($3, $4))
          order by name, user_id
          limit $5",
    )
    .bind(organization_id)
    .bind(role)
    .bind(after_name)
    .bind(after_id)
    .bind(limit)
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
