//! The ledger's read endpoints: balances materialized by the ledger processor, the trial
//! balance, customer statements and journal entries. The reads themselves are the
//! ledger's (`dhanman_processors::ledger::read`); here they are parsed, scoped to the
//! caller's organization, waited for (`?consistent_with=`) and rendered.

use axum::Json;
use axum::extract::{Path, State};
use chrono::NaiveDate;
use dhanman_processors::applied::applied_by;
use dhanman_processors::ledger::{self, read};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::consistency::{Wait, wait_for_ledger};
use crate::extract::{Auth, Params, path_uuid};
use crate::page::PageRequest;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistent {
    pub consistent_with: Option<String>,
}

/// The customer's name, if the customer is the organization's.
async fn customer_name(
    pool: &PgPool,
    organization_id: Uuid,
    customer_id: Uuid,
) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar!(
        "select name from customers where id = $1 and organization_id = $2",
        customer_id,
        organization_id
    )
    .fetch_optional(pool)
    .await?)
}

/// A consistent read's first look, if the customer is the organization's: whether the
/// ledger has applied `event` (the look of [`dhanman_processors::applied::has_applied`]),
/// in the round trip that finds the customer.
async fn customer_and_first_look(
    pool: &PgPool,
    organization_id: Uuid,
    customer_id: Uuid,
    event: Uuid,
) -> Result<Option<bool>, ApiError> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select exists(select 1 from {} where event_id = $3)
           from customers c where c.id = $1 and c.organization_id = $2",
        applied_by(read::LEDGER)
    )))
    .bind(customer_id)
    .bind(organization_id)
    .bind(event)
    .fetch_optional(pool)
    .await?)
}

/// A customer's receivable. Its read is one statement when nothing is waited for or memory
/// knows the event applied; when memory knows it is not yet, and the customer is known to be
/// the caller's organization's, the read waits first and is then that one statement. Else a
/// first look (the customer and whether the event is applied, one statement) comes before.
pub async fn customer_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    let customer_id = path_uuid(&id, "customer")?;
    let organization_id = caller.organization_id;
    let known = state.customer_organizations.get(&customer_id) == Some(organization_id);
    if let Some(wait) = Wait::begin(&state, read::LEDGER, q.consistent_with.as_deref())? {
        let applied = match wait.remembered() {
            Some(true) => true,
            Some(false) if known => false,
            _ => {
                let looked = customer_and_first_look(
                    &state.pool,
                    organization_id,
                    customer_id,
                    wait.event_id(),
                )
                .await?;
                let Some(applied) = looked else {
                    return Err(ApiError::NotFound("customer".into()));
                };
                applied
            }
        };
        wait.finish(applied).await?;
    }
    let Some((name, balances)) =
        read::customer_with_balances(&state.pool, organization_id, customer_id).await?
    else {
        return Err(ApiError::NotFound("customer".into()));
    };
    if !known {
        // A customer never moves to another organization.
        state
            .customer_organizations
            .insert(customer_id, organization_id);
    }
    Ok(Json(json!({
        "customer_id": customer_id,
        "name": name,
        "account_code": ledger::AR,
        "balances": balances,
    })))
}

pub async fn account_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(code): Path<String>,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    let Some(account) = read::account(&state.pool, &code).await? else {
        return Err(ApiError::NotFound("account".into()));
    };
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let balances = read::account_balances(&state.pool, caller.organization_id, &account).await?;
    Ok(Json(json!({
        "account_code": account.code,
        "name": account.name,
        "type": account.account_type,
        "balances": balances,
    })))
}

pub async fn trial_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let currencies = read::trial_balance(&state.pool, caller.organization_id).await?;
    Ok(Json(
        json!({ "organization_id": caller.organization_id, "currencies": currencies }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub consistent_with: Option<String>,
    pub limit: Option<String>,
    pub after: Option<String>,
}

fn statement_date(raw: Option<&str>, field: &str) -> Result<Option<NaiveDate>, ApiError> {
    raw.map(|s| {
        dhanman_producers::input::strict_date(s).map_err(|m| ApiError::validation(field, m))
    })
    .transpose()
}

/// The customer's receivable lines between two days, with running balance, per currency,
/// a page of lines at a time (see [`read::statement()`]).
pub async fn customer_statement(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<StatementQuery>,
) -> Result<Json<Value>, ApiError> {
    let customer_id = path_uuid(&id, "customer")?;
    let from = statement_date(q.from.as_deref(), "from")?;
    let to = statement_date(q.to.as_deref(), "to")?;
    let page =
        PageRequest::<read::statement::LineKey>::parse(q.limit.as_deref(), q.after.as_deref())?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::validation("from", "must not be after to"));
    }
    if customer_name(&state.pool, caller.organization_id, customer_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("customer".into()));
    }
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let mut statement = read::statement(
        &state.pool,
        caller.organization_id,
        customer_id,
        (from, to),
        page.after,
        page.fetch(),
    )
    .await?;
    let next = page.finish(&mut statement.lines, read::statement::Line::key);
    Ok(Json(json!({
        "customer_id": customer_id,
        "from": from,
        "to": to,
        "currencies": statement.currencies(),
        "next": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    pub reference_id: Option<String>,
    pub consistent_with: Option<String>,
    pub limit: Option<String>,
    pub after: Option<String>,
}

/// The entries of one reference (an invoice, a payment, ...) with their lines, oldest
/// first, a page of entries at a time. A salary's entries (what an employee is paid) only
/// for the roles that may read salaries; others see none.
pub async fn entries(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<EntriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let reference_id: Uuid = q
        .reference_id
        .as_deref()
        .ok_or_else(|| ApiError::validation("reference_id", "is required"))?
        .parse()
        .map_err(|_| ApiError::validation("reference_id", "must be a UUID"))?;
    let page =
        PageRequest::<read::entries::EntryKey>::parse(q.limit.as_deref(), q.after.as_deref())?;
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let with_salaries = dhanman_producers::payroll::SALARY_READERS.contains(&caller.role.as_str());
    let mut entries = read::entries(
        &state.pool,
        caller.organization_id,
        reference_id,
        with_salaries,
        page.after,
        page.fetch(),
    )
    .await?;
    let next = page.finish(&mut entries, read::Entry::key);
    Ok(Json(json!({ "entries": entries, "next": next })))
}
