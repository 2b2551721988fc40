//! User sync: keeps the users projection (`user_directory`) current from `UserCreated`, so
//! that every context can find people (approvers' addresses, a requester's name) without
//! reading the command side's tables.

use dhanman_schemas::Event;
use dhanman_schemas::topics;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{Applied, ApplyError, Processor};

#[derive(Debug, Default)]
pub struct UserSync;

impl Processor for UserSync {
    fn name(&self) -> &str {
        "users"
    }

    fn topics(&self) -> Vec<String> {
        vec![topics::USERS.to_string()]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        for event in events {
            let Event::UserCreated(user) = event else {
                continue;
            };
            // A later event about the same user wins; a replay of an older one changes
            // nothing (the runtime never hands over an event twice, but a topic rewritten by
            // hand might).
            // A user belongs to one organization: an event naming the user under another
            // is refused (dead-lettered), never an edit of someone else's approver.
            let owner: Option<Uuid> = sqlx::query_scalar(
                "insert into user_directory
                     (user_id, organization_id, email, name, role, source_event_id)
                 values ($1, $2, $3, $4, $5, $6)
                 on conflict (user_id) do update
                    set email = excluded.email, name = excluded.name, role = excluded.role,
                        source_event_id = excluded.source_event_id, updated_at = now()
                  where user_directory.source_event_id < excluded.source_event_id
                    and user_directory.organization_id = excluded.organization_id
                 returning organization_id",
            )
            .bind(user.user_id)
            .bind(user.envelope.organization_id)
            .bind(&user.email)
            .bind(&user.name)
            .bind(&user.role)
            .bind(user.envelope.event_id)
            .fetch_optional(&mut *conn)
            .await?;
            if owner.is_none() {
                let held_by: Option<Uuid> = sqlx::query_scalar(
                    "select organization_id from user_directory where user_id = $1",
                )
                .bind(user.user_id)
                .fetch_optional(&mut *conn)
                .await?;
                if held_by.is_some_and(|org| org != user.envelope.organization_id) {
                    return Err(ApplyError::Poison(format!(
                        "user_id: user {} belongs to another organization",
                        user.user_id
                    )));
                }
            }
            tracing::info!(
                correlation_id = %user.envelope.correlation_id,
                user_id = %user.user_id,
                role = %user.role,
                "user synced"
            );
        }
        Ok(Applied::default())
    }
}
