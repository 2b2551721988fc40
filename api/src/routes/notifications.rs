//! The notification delivery log (`notification_deliveries`): the caller's organization
//! only, optionally one recipient or one status. Only the roles that keep the books read
//! it: it names every resident's and employee's address and what they were sent (payslip
//! amounts among them), which is no more than an administrator or accountant may read
//! elsewhere, and more than approvers and managers may.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::extract::{Auth, Params};
use crate::page::PageRequest;
use crate::{ApiError, AppState};

/// Who may read the delivery log.
pub const READERS: &[&str] = dhanman_producers::BOOKKEEPERS;

/// Statuses a delivery can have.
pub const STATUSES: &[&str] = &["pending", "sending", "sent", "skipped", "dead_lettered"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    pub recipient: Option<String>,
    pub status: Option<String>,
    pub limit: Option<String>,
    pub after: Option<String>,
}

/// A delivery's place in the log: newest first, then by event, recipient and template.
type Key = (DateTime<Utc>, Uuid, String, String);

#[derive(Debug, Serialize)]
struct Delivery {
    event_id: Uuid,
    recipient: String,
    template: String,
    event_type: String,
    status: String,
    attempts: i32,
    subject: String,
    message_id: String,
    reason: Option<String>,
    last_error: Option<String>,
    correlation_id: String,
    created_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

/// The deliveries matching the filters, newest first, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<NotificationQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, "reading the notification log")?;
    if let Some(status) = q.status.as_deref().filter(|s| !STATUSES.contains(s)) {
        return Err(ApiError::validation(
            "status",
            format!("{status:?} is not one of {}", STATUSES.join(", ")),
        ));
    }
    let page = PageRequest::<Key>::parse(q.limit.as_deref(), q.after.as_deref())?;
    let (at, event, recipient, template) = match page.after.clone() {
        Some((at, event, recipient, template)) => {
            (Some(at), Some(event), Some(recipient), Some(template))
        }
        None => (None, None, None, None),
    };
    let mut deliveries = sqlx::query_as!(
        Delivery,
        "select event_id, recipient, template, event_type, status, attempts, subject,
                message_id, reason, last_error, correlation_id, created_at, next_attempt_at,
                sent_at
           from notification_deliveries
          where organization_id = $1
            and ($2::text is null or lower(recipient) = lower($2))
            and ($3::text is null or status = $3)
            and ($4::timestamptz is null or created_at < $4
                 or (created_at = $4 and (event_id, recipient, template) > ($5, $6, $7)))
          order by created_at desc, event_id, recipient, template
          limit $8",
        caller.organization_id,
        q.recipient.as_deref().map(str::trim),
        q.status.as_deref(),
        at,
        event,
        recipient,
        template,
        page.fetch()
    )
    .fetch_all(&state.pool)
    .await?;
    let next = page.finish(&mut deliveries, |d| {
        (
            d.created_at,
            d.event_id,
            d.recipient.clone(),
            d.template.clone(),
        )
    });
    Ok(Json(json!({ "notifications": deliveries, "next": next })))
}
