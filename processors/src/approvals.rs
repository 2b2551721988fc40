//! Approval requests: for each `POSubmitted`, one `SendApprovalRequest` per user who can
//! give an approval the order needs (from the users projection), written to the outbox in
//! the batch's transaction. The requester is never asked to approve their own order.

use dhanman_plumbing::outbox;
use dhanman_schemas::Event;
use dhanman_schemas::events::{Envelope, POSubmitted, SendApprovalRequest};
use dhanman_schemas::topics;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{Applied, ApplyError, Processor};

/// Roles that may give each approval an order can need.
pub fn roles_for_step(step: &str) -> &'static [&'static str] {
    match step {
        "manager" => &["manager", "approver"],
        "cfo" => &["cfo"],
        _ => &[],
    }
}

#[derive(Debug, Default)]
pub struct ApprovalRequests;

impl Processor for ApprovalRequests {
    fn name(&self) -> &str {
        "approvals"
    }

    fn topics(&self) -> Vec<String> {
        vec![topics::PURCHASE_ORDERS.to_string()]
    }

    /// Only a submitted order asks for approvals; its reads take no consistency token.
    fn ignores(&self, event: &Event) -> bool {
        !matches!(event, Event::POSubmitted(_))
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        for event in events {
            if let Event::POSubmitted(po) = event {
                request_approvals(conn, po).await?;
            }
        }
        Ok(Applied::default())
    }
}

async fn request_approvals(conn: &mut PgConnection, po: &POSubmitted) -> Result<(), ApplyError> {
    let organization_id = po.envelope.organization_id;
    for step in &po.required_approvers {
        let approvers: Vec<(Uuid, String)> = sqlx::query_as(
            "select user_id, email from user_directory
              where organization_id = $1 and role = any($2) and user_id <> $3
              order by user_id",
        )
        .bind(organization_id)
        .bind(roles_for_step(step))
        .bind(po.requester_id)
        .fetch_all(&mut *conn)
        .await?;
        if approvers.is_empty() {
            tracing::warn!(
                correlation_id = %po.envelope.correlation_id,
                po_id = %po.po_id,
                %step,
                "no user can give this approval yet; nobody was asked"
            );
        }
        for (approver_id, email) in approvers {
            let command = SendApprovalRequest {
                envelope: Envelope::new(
                    organization_id,
                    &po.envelope.correlation_id,
                    Some(po.envelope.event_id.to_string()),
                ),
                po_id: po.po_id,
                approver_role: step.clone(),
                approver_id: Some(approver_id),
                recipient: email,
                amount: po.amount,
                currency: po.currency.clone(),
            };
            outbox::enqueue(conn, &command).await?;
        }
        tracing::info!(
            correlation_id = %po.envelope.correlation_id,
            po_id = %po.po_id,
            %step,
            "approval requested"
        );
    }
    Ok(())
}
