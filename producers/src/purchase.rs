//! Purchase commands: orders, their approvals, and vendor bills.
//!
//! An order needs a manager's approval, and a CFO's as well above the threshold
//! ([`ApprovalPolicy`]). Each approval is given once, by a key of a role that may give it,
//! never by the requester, and every decision on an order comes from a different person
//! (by user id: a user whose role changed between two steps still decides once); the last one approves the order (`POApproved`, which reserves
//! the budget in the ledger), a rejection ends it (`PORejected`). The order's row is
//! locked while a decision is taken, so concurrent decisions change its state once.
//!
//! A bill may name an approved order: it then releases that much of the reservation, and
//! the bills of an order never add up to more than the order.

use chrono::{DateTime, NaiveDate, Utc};
use dhanman_plumbing::outbox;
use dhanman_schemas::events::{
    BillCreated, Envelope, FieldError, POApproved, PORejected, POSubmitted, PoItem, check_money,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::input::{Amount, Breaks, Day, required_line, trimmed};
use crate::{BOOKKEEPERS, Caller, Error, Result};

/// Largest number of line items on one order.
pub const MAX_ITEMS: usize = 100;

/// Which approvals an order needs.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalPolicy {
    /// Orders above this amount need the CFO's approval as well as a manager's.
    pub cfo_threshold: Decimal,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            cfo_threshold: Decimal::new(50_000, 0),
        }
    }
}

impl ApprovalPolicy {
    pub fn required(&self, amount: Decimal) -> Vec<String> {
        let mut steps = vec!["manager".to_string()];
        if amount > self.cfo_threshold {
            steps.push("cfo".to_string());
        }
        steps
    }
}

/// Roles that give an approval ([`step_of`]): the only ones that may approve or reject.
pub const APPROVER_ROLES: &[&str] = &["manager", "approver", "cfo"];

/// The approval (step) a role gives: managers and general approvers give the manager's,
/// the CFO the CFO's. Other roles give none.
pub fn step_of(role: &str) -> Option<&'static str> {
    match role {
        "manager" | "approver" => Some("manager"),
        "cfo" => Some("cfo"),
        _ => None,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub description: Option<String>,
    pub quantity: Option<i32>,
    pub unit_price: Option<Amount>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPurchaseOrder {
    pub vendor_id: Option<Uuid>,
    pub vendor_name: Option<String>,
    pub currency: Option<String>,
    pub items: Option<Vec<NewItem>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PurchaseOrder {
    pub po_id: Uuid,
    pub vendor_id: Uuid,
    pub vendor_name: String,
    pub requester_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    #[sqlx(json)]
    pub items: Vec<PoItem>,
    pub required_approvals: Vec<String>,
    pub status: String,
    pub billed: Decimal,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// One decision in an order's approval trail.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TrailEntry {
    pub step: String,
    pub decision: String,
    pub user_id: Uuid,
    pub role: String,
    pub comment: Option<String>,
    pub decided_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct PurchaseOrderView {
    #[serde(flatten)]
    pub order: PurchaseOrder,
    /// Approvals still missing while the order is pending.
    pub pending_approvals: Vec<String>,
    pub approval_trail: Vec<TrailEntry>,
}

#[derive(Debug, Serialize)]
pub struct PurchaseOrderReply {
    #[serde(flatten)]
    pub order: PurchaseOrderView,
    /// The event this command caused (`POSubmitted`, `POApproved`, `PORejected`), or
    /// none for an approval that leaves the order pending.
    pub consistency_token: Option<Uuid>,
}

fn check_items(items: Option<Vec<NewItem>>, currency: &str) -> Result<(Vec<PoItem>, Decimal)> {
    let items = items.ok_or_else(|| FieldError::new("items", "is required"))?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(FieldError::new("items", format!("must hold 1 to {MAX_ITEMS} items")).into());
    }
    let mut total = Decimal::ZERO;
    let mut checked = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = |name: &str| format!("items[{i}].{name}");
        let description =
            required_line(&field("description"), item.description.as_deref(), 500)?.to_string();
        let quantity = item
            .quantity
            .ok_or_else(|| FieldError::new(&field("quantity"), "is required"))?;
        if !(1..=1_000_000).contains(&quantity) {
            return Err(FieldError::new(&field("quantity"), "must be 1 to 1000000").into());
        }
        let unit_price = item
            .unit_price
            .map(Amount::value)
            .ok_or_else(|| FieldError::new(&field("unit_price"), "is required"))?;
        check_money(&field("unit_price"), unit_price, currency)?;
        total = unit_price
            .checked_mul(Decimal::from(quantity))
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| FieldError::new("items", "total is too large"))?;
        checked.push(PoItem {
            description,
            quantity,
            unit_price: unit_price.round_dp(2),
        });
    }
    check_money("items", total, currency)?;
    Ok((checked, total))
}

/// Submits an order from the caller (its requester): the row and `POSubmitted` naming the
/// approvals it needs.
pub async fn submit_order(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewPurchaseOrder,
    policy: ApprovalPolicy,
) -> Result<PurchaseOrderReply> {
    submit_order_with_id(conn, caller, input, policy, Uuid::now_v7()).await
}

/// [`submit_order`] under an id the caller chose (an order announced by another system
/// keeps its id, which its approvals and bills name).
pub async fn submit_order_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewPurchaseOrder,
    policy: ApprovalPolicy,
    po_id: Uuid,
) -> Result<PurchaseOrderReply> {
    let requester_id = caller.user("submitting a purchase order")?;
    let vendor_id = input
        .vendor_id
        .ok_or_else(|| FieldError::new("vendor_id", "is required"))?;
    let vendor_name = required_line("vendor_name", input.vendor_name.as_deref(), 200)?.to_string();
    let currency = input.currency.unwrap_or_else(|| "INR".to_string());
    let (items, amount) = check_items(input.items, &currency)?;
    let required = policy.required(amount);

    sqlx::query(
        "insert into purchase_orders
             (id, organization_id, vendor_id, vendor_name, requester_id, amount, currency, items,
              required_approvals)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(po_id)
    .bind(caller.organization_id)
    .bind(vendor_id)
    .bind(&vendor_name)
    .bind(requester_id)
    .bind(amount)
    .bind(&currency)
    .bind(Json(&items))
    .bind(&required)
    .execute(&mut *conn)
    .await?;
    let event = POSubmitted {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        po_id,
        vendor_id,
        requester_id,
        amount,
        currency,
        items,
        required_approvers: required,
    };
    let token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%po_id, %amount, approvals = ?event.required_approvers, event_id = %token, "purchase order submitted");
    let order = find_order(conn, caller, po_id)
        .await?
        .ok_or(Error::NotFound("purchase order"))?;
    Ok(PurchaseOrderReply {
        order,
        consistency_token: Some(token),
    })
}

/// Approves an order with the approval the caller's role gives.
pub async fn approve_order(
    conn: &mut PgConnection,
    caller: &Caller,
    po_id: Uuid,
    input: Decision,
) -> Result<PurchaseOrderReply> {
    decide(conn, caller, po_id, input, true).await
}

/// Rejects an order; any approver the order is waiting for may.
pub async fn reject_order(
    conn: &mut PgConnection,
    caller: &Caller,
    po_id: Uuid,
    input: Decision,
) -> Result<PurchaseOrderReply> {
    decide(conn, caller, po_id, input, false).await
}

async fn decide(
    conn: &mut PgConnection,
    caller: &Caller,
    po_id: Uuid,
    input: Decision,
    approve: bool,
) -> Result<PurchaseOrderReply> {
    let verb = if approve { "approving" } else { "rejecting" };
    caller.require(APPROVER_ROLES, &format!("{verb} a purchase order"))?;
    let user_id = caller.user(&format!("{verb} a purchase order"))?;
    let comment =
        trimmed("comment", input.comment.as_deref(), 1000, Breaks::Allowed)?.map(str::to_string);
    // The lock makes concurrent decisions on one order take turns.
    let order: Option<PurchaseOrder> = sqlx::query_as(
        "select id as po_id, vendor_id, vendor_name, requester_id, amount, currency::text as currency,
                items, required_approvals, status, billed, created_at, decided_at
           from purchase_orders where id = $1 and organization_id = $2 for update",
    )
    .bind(po_id)
    .bind(caller.organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let order = order.ok_or(Error::NotFound("purchase order"))?;
    if order.requester_id == user_id {
        return Err(Error::Forbidden(
            "the requester of a purchase order may not approve or reject it".into(),
        ));
    }
    let step = step_of(&caller.role)
        .filter(|s| order.required_approvals.iter().any(|r| r == s))
        .ok_or_else(|| {
            Error::Forbidden(format!(
                "this order needs the approval of {}; a key with the role {} gives none of them",
                order.required_approvals.join(" and "),
                caller.role
            ))
        })?;
    if order.status != "pending" {
        return Err(Error::Conflict(format!(
            "purchase order {po_id} is already {}",
            order.status
        )));
    }
    let given: Option<(String, Uuid)> =
        sqlx::query_as("select decision, user_id from po_decisions where po_id = $1 and step = $2")
            .bind(po_id)
            .bind(step)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((decision, by)) = given {
        return Err(Error::Conflict(format!(
            "the {step} approval of purchase order {po_id} was already given ({decision} by user {by})"
        )));
    }
    // Separation of duties: the approvals of one order come from distinct people.
    let own: Option<(String, String)> =
        sqlx::query_as("select step, decision from po_decisions where po_id = $1 and user_id = $2")
            .bind(po_id)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((own_step, decision)) = own {
        return Err(Error::Forbidden(format!(
            "user {user_id} already decided the {own_step} step of purchase order {po_id} \
             ({decision}); each approval must come from a different person"
        )));
    }
    sqlx::query(
        "insert into po_decisions (po_id, step, decision, user_id, role, comment)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(po_id)
    .bind(step)
    .bind(if approve { "approved" } else { "rejected" })
    .bind(user_id)
    .bind(&caller.role)
    .bind(&comment)
    .execute(&mut *conn)
    .await?;

    let approvals: Vec<(Uuid,)> = sqlx::query_as(
        "select user_id from po_decisions where po_id = $1 and decision = 'approved'
          order by decided_at, step",
    )
    .bind(po_id)
    .fetch_all(&mut *conn)
    .await?;
    let envelope = Envelope::new(caller.organization_id, &caller.correlation_id, None);
    let token = if !approve {
        set_status(conn, po_id, "rejected").await?;
        let event = PORejected {
            envelope,
            po_id,
            vendor_id: order.vendor_id,
            requester_id: order.requester_id,
            amount: order.amount,
            currency: order.currency.clone(),
            rejected_by: user_id,
            reason: comment.unwrap_or_default(),
        };
        Some(outbox::enqueue(conn, &event).await?)
    } else if approvals.len() == order.required_approvals.len() {
        set_status(conn, po_id, "approved").await?;
        let event = POApproved {
            envelope,
            po_id,
            vendor_id: order.vendor_id,
            requester_id: order.requester_id,
            amount: order.amount,
            currency: order.currency.clone(),
            approved_by: approvals.into_iter().map(|(u,)| u).collect(),
        };
        Some(outbox::enqueue(conn, &event).await?)
    } else {
        None
    };
    tracing::info!(%po_id, %step, approve, %user_id, event_id = ?token, "purchase order decision");
    let order = find_order(conn, caller, po_id)
        .await?
        .ok_or(Error::NotFound("purchase order"))?;
    Ok(PurchaseOrderReply {
        order,
        consistency_token: token,
    })
}

async fn set_status(conn: &mut PgConnection, po_id: Uuid, status: &str) -> Result<()> {
    sqlx::query("update purchase_orders set status = $2, decided_at = now() where id = $1")
        .bind(po_id)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}

/// The order `id` of the caller's organization with its approval trail.
pub async fn find_order(
    conn: &mut PgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<PurchaseOrderView>> {
    let order: Option<PurchaseOrder> = sqlx::query_as(
        "select id as po_id, vendor_id, vendor_name, requester_id, amount, currency::text as currency,
                items, required_approvals, status, billed, created_at, decided_at
           from purchase_orders where id = $1 and organization_id = $2",
    )
    .bind(id)
    .bind(caller.organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(order) = order else {
        return Ok(None);
    };
    let approval_trail: Vec<TrailEntry> = sqlx::query_as(
        "select step, decision, user_id, role, comment, decided_at
           from po_decisions where po_id = $1 order by decided_at, step",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    let pending_approvals = if order.status == "pending" {
        order
            .required_approvals
            .iter()
            .filter(|s| !approval_trail.iter().any(|t| &t.step == *s))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some(PurchaseOrderView {
        order,
        pending_approvals,
        approval_trail,
    }))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBill {
    pub vendor_id: Option<Uuid>,
    pub po_id: Option<Uuid>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    pub description: Option<String>,
    pub due_date: Option<Day>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Bill {
    pub bill_id: Uuid,
    pub vendor_id: Uuid,
    pub po_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    pub description: String,
    pub due_date: NaiveDate,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct CreatedBill {
    #[serde(flatten)]
    pub bill: Bill,
    pub consistency_token: Uuid,
}

/// Records a vendor bill; against an order, only an approved one of the same vendor and
/// currency, and never beyond what is left of it.
pub async fn create_bill(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewBill,
) -> Result<CreatedBill> {
    caller.require(BOOKKEEPERS, "recording a bill")?;
    create_bill_with_id(conn, caller, input, Uuid::now_v7()).await
}

/// [`create_bill`] under an id the caller chose (a bill announced by another system keeps
/// its id).
pub async fn create_bill_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewBill,
    bill_id: Uuid,
) -> Result<CreatedBill> {
    let vendor_id = input
        .vendor_id
        .ok_or_else(|| FieldError::new("vendor_id", "is required"))?;
    let amount = input
        .amount
        .map(Amount::value)
        .ok_or_else(|| FieldError::new("amount", "is required"))?;
    let currency = input.currency.unwrap_or_else(|| "INR".to_string());
    check_money("amount", amount, &currency)?;
    let amount = amount.round_dp(2);
    let description = required_line("description", input.description.as_deref(), 500)?.to_string();
    let due_date = input
        .due_date
        .map(Day::date)
        .ok_or_else(|| FieldError::new("due_date", "is required"))?;

    if let Some(po_id) = input.po_id {
        charge_order(conn, caller, po_id, vendor_id, amount, &currency).await?;
    }
    let bill: Bill = sqlx::query_as(
        "insert into bills (id, organization_id, vendor_id, po_id, amount, currency, description, due_date)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id as bill_id, vendor_id, po_id, amount, currency::text as currency, description,
                   due_date, created_at",
    )
    .bind(bill_id)
    .bind(caller.organization_id)
    .bind(vendor_id)
    .bind(input.po_id)
    .bind(amount)
    .bind(&currency)
    .bind(&description)
    .bind(due_date)
    .fetch_one(&mut *conn)
    .await?;
    let event = BillCreated {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        bill_id,
        vendor_id,
        po_id: input.po_id,
        amount,
        currency,
        description,
        due_date,
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%bill_id, %vendor_id, po_id = ?input.po_id, %amount, event_id = %consistency_token, "bill created");
    Ok(CreatedBill {
        bill,
        consistency_token,
    })
}

/// Adds a bill's amount to its order's billed total, under the order's row lock.
async fn charge_order(
    conn: &mut PgConnection,
    caller: &Caller,
    po_id: Uuid,
    vendor_id: Uuid,
    amount: Decimal,
    currency: &str,
) -> Result<()> {
    let order: Option<(Uuid, String, String, Decimal, Decimal)> = sqlx::query_as(
        "select vendor_id, status, currency::text, amount, billed from purchase_orders
          where id = $1 and organization_id = $2 for update",
    )
    .bind(po_id)
    .bind(caller.organization_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((po_vendor, status, po_currency, po_amount, billed)) = order else {
        return Err(FieldError::new("po_id", "no such purchase order in this organization").into());
    };
    if status != "approved" {
        return Err(Error::Conflict(format!(
            "purchase order {po_id} is {status}; only an approved order can be billed"
        )));
    }
    if po_vendor != vendor_id {
        return Err(FieldError::new("vendor_id", "is not the vendor of the purchase order").into());
    }
    if po_currency != currency {
        return Err(FieldError::new(
            "currency",
            format!("must be the purchase order's currency, {po_currency}"),
        )
        .into());
    }
    let left = po_amount - billed;
    if amount > left {
        return Err(FieldError::new(
            "amount",
            format!("exceeds what is left to bill on the purchase order: {left} {po_currency}"),
        )
        .into());
    }
    sqlx::query("update purchase_orders set billed = billed + $2 where id = $1")
        .bind(po_id)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// The bill `id` of the caller's organization.
pub async fn find_bill(conn: &mut PgConnection, caller: &Caller, id: Uuid) -> Result<Option<Bill>> {
    let bill = sqlx::query_as(
        "select id as bill_id, vendor_id, po_id, amount, currency::text as currency, description,
                due_date, created_at
           from bills where id = $1 and organization_id = $2",
    )
    .bind(id)
    .bind(caller.organization_id)
    .fetch_optional(conn)
    .await?;
    Ok(bill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cfo_approves_only_above_the_threshold() {
        let policy = ApprovalPolicy::default();
        assert_eq!(policy.required(Decimal::new(50_000, 0)), ["manager"]);
        assert_eq!(
            policy.required(Decimal::new(5_000_001, 2)),
            ["manager", "cfo"]
        );
    }

    #[test]
    fn items_are_checked_by_position_and_summed() {
        let item = |q, p: &str| NewItem {
            description: Some("Paint".into()),
            quantity: Some(q),
            unit_price: Some(p.parse().unwrap()),
        };
        let (_, total) = check_items(Some(vec![item(3, "10.50"), item(2, "0.25")]), "INR").unwrap();
        assert_eq!(total, "32.00".parse::<Decimal>().unwrap());
        let err = check_items(Some(vec![item(1, "1.00"), item(0, "1.00")]), "INR").unwrap_err();
        assert!(err.to_string().starts_with("items[1].quantity"), "{err}");
        let err = check_items(Some(vec![item(1, "1.001")]), "INR").unwrap_err();
        assert!(err.to_string().starts_with("items[0].unit_price"), "{err}");
        assert!(check_items(Some(vec![]), "INR").is_err());
    }
}
