//! Read side of the ledger: balances materialized by the ledger processor, the trial
//! balance and journal entries. Every query is scoped to the caller's organization.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::consistency::wait_for_ledger;
use crate::extract::{Auth, Params, path_uuid};
use crate::page::PageRequest;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistent {
    pub consistent_with: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct BalanceRow {
    currency: String,
    debit_total: Decimal,
    credit_total: Decimal,
}

/// Money as the API shows it: always two decimal places (Postgres hands back a zero
/// without them).
fn money(mut d: Decimal) -> Decimal {
    d.rescale(2);
    d
}

/// Net balance on the account's normal side.
fn normal_balance(account_type: &str, debit: Decimal, credit: Decimal) -> Decimal {
    match account_type {
        "asset" | "expense" => debit - credit,
        _ => credit - debit,
    }
}

pub async fn customer_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    let customer_id = path_uuid(&id, "customer")?;
    let found: Option<(String,)> =
        sqlx::query_as("select name from customers where id = $1 and organization_id = $2")
            .bind(customer_id)
            .bind(caller.organization_id)
            .fetch_optional(&state.pool)
            .await?;
    let Some((name,)) = found else {
        return Err(ApiError::NotFound("customer".into()));
    };
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let rows: Vec<BalanceRow> = sqlx::query_as(
        "select currency::text as currency, debit_total, credit_total from party_balances
          where organization_id = $1 and account_code = '1200' and party_type = 'customer'
            and party_id = $2 order by currency",
    )
    .bind(caller.organization_id)
    .bind(customer_id)
    .fetch_all(&state.pool)
    .await?;
    let balances: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "currency": r.currency,
                "invoiced": money(r.debit_total),
                "settled": money(r.credit_total),
                "balance": money(r.debit_total - r.credit_total),
            })
        })
        .collect();
    Ok(Json(json!({
        "customer_id": customer_id,
        "name": name,
        "account_code": "1200",
        "balances": balances,
    })))
}

pub async fn account_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(code): Path<String>,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    let account: Option<(String, String)> =
        sqlx::query_as("select name, type from accounts where code = $1")
            .bind(&code)
            .fetch_optional(&state.pool)
            .await?;
    let Some((name, account_type)) = account else {
        return Err(ApiError::NotFound("account".into()));
    };
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let rows: Vec<BalanceRow> = sqlx::query_as(
        "select currency::text as currency, debit_total, credit_total from account_balances
          where organization_id = $1 and account_code = $2 order by currency",
    )
    .bind(caller.organization_id)
    .bind(&code)
    .fetch_all(&state.pool)
    .await?;
    let balances: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "currency": r.currency,
                "debit_total": money(r.debit_total),
                "credit_total": money(r.credit_total),
                "balance": money(normal_balance(&account_type, r.debit_total, r.credit_total)),
            })
        })
        .collect();
    Ok(Json(json!({
        "account_code": code,
        "name": name,
        "type": account_type,
        "balances": balances,
    })))
}

/// One currency's column of the trial balance.
#[derive(Default)]
struct CurrencyTrial {
    accounts: Vec<Value>,
    debits: Decimal,
    credits: Decimal,
    /// (type, debit, credit) per account type, keyed in chart order.
    by_type: std::collections::BTreeMap<u8, (String, Decimal, Decimal)>,
}

/// Account types in the order a chart of accounts lists them.
fn type_rank(account_type: &str) -> u8 {
    match account_type {
        "asset" => 0,
        "liability" => 1,
        "equity" => 2,
        "revenue" => 3,
        "expense" => 4,
        _ => u8::MAX,
    }
}

pub async fn trial_balance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<Consistent>,
) -> Result<Json<Value>, ApiError> {
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let rows: Vec<(String, String, String, String, Decimal, Decimal)> = sqlx::query_as(
        "select a.code, a.name, a.type, b.currency::text, b.debit_total, b.credit_total
           from account_balances b join accounts a on a.code = b.account_code
          where b.organization_id = $1 order by b.currency, a.code",
    )
    .bind(caller.organization_id)
    .fetch_all(&state.pool)
    .await?;
    let mut by_currency: std::collections::BTreeMap<String, CurrencyTrial> = Default::default();
    for (code, name, account_type, currency, debit, credit) in rows {
        let net = debit - credit;
        let (dr, cr) = if net >= Decimal::ZERO {
            (net, Decimal::ZERO)
        } else {
            (Decimal::ZERO, -net)
        };
        let slot = by_currency.entry(currency).or_default();
        slot.debits += dr;
        slot.credits += cr;
        slot.accounts.push(json!({
            "account_code": code, "name": name, "type": account_type,
            "debit": money(dr), "credit": money(cr),
        }));
        let totals = slot.by_type.entry(type_rank(&account_type)).or_insert((
            account_type,
            Decimal::ZERO,
            Decimal::ZERO,
        ));
        totals.1 += dr;
        totals.2 += cr;
    }
    let currencies: Vec<Value> = by_currency
        .into_iter()
        .map(|(currency, t)| {
            let by_type: Vec<Value> = t
                .by_type
                .into_values()
                .map(|(account_type, dr, cr)| {
                    json!({
                        "type": account_type, "debit": money(dr), "credit": money(cr),
                        "balance": money(normal_balance(&account_type, dr, cr)),
                    })
                })
                .collect();
            json!({
                "currency": currency,
                "accounts": t.accounts,
                "total_debit": money(t.debits),
                "total_credit": money(t.credits),
                "balanced": t.debits == t.credits,
                "by_type": by_type,
            })
        })
        .collect();
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

/// Start of a UTC day: statement dates are days of `occurred_at` in UTC.
fn day_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(chrono::NaiveTime::MIN).and_utc()
}

#[derive(sqlx::FromRow)]
struct StatementLine {
    id: i64,
    currency: String,
    occurred_at: DateTime<Utc>,
    entry_id: Uuid,
    description: String,
    reference_type: String,
    reference_id: Uuid,
    debit: Decimal,
    credit: Decimal,
}

/// The customer's receivable (account 1200) lines between two days, with running balance,
/// per currency, a page of lines at a time: each currency's `opening_balance` is its
/// balance before the page's first line (on the first page, before `from`) and its
/// `closing_balance` the balance after the page's last line.
pub async fn customer_statement(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<StatementQuery>,
) -> Result<Json<Value>, ApiError> {
    let customer_id = path_uuid(&id, "customer")?;
    let from = statement_date(q.from.as_deref(), "from")?;
    let to = statement_date(q.to.as_deref(), "to")?;
    let page = PageRequest::<(DateTime<Utc>, i64)>::parse(q.limit.as_deref(), q.after.as_deref())?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::validation("from", "must not be after to"));
    }
    let found: Option<(Uuid,)> =
        sqlx::query_as("select id from customers where id = $1 and organization_id = $2")
            .bind(customer_id)
            .bind(caller.organization_id)
            .fetch_optional(&state.pool)
            .await?;
    if found.is_none() {
        return Err(ApiError::NotFound("customer".into()));
    }
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let from_at = from.map(day_start);
    // `to` is inclusive: everything before the start of the next day.
    let to_end = to.and_then(|d| d.succ_opt()).map(day_start);
    let (after_at, after_id) = page.after.unzip();
    // Everything before the page: before `from`, and the pages already read.
    let opening: Vec<(String, Decimal)> = if from_at.is_some() || after_at.is_some() {
        sqlx::query_as(
            "select e.currency::text, sum(p.debit - p.credit)
               from postings p join journal_entries e on e.id = p.entry_id
              where p.party_id = $2 and p.party_type = 'customer'
                and p.account_code = '1200' and p.organization_id = $1
                and (e.occurred_at < $3 or (e.occurred_at, p.id) <= ($4, $5))
              group by e.currency",
        )
        .bind(caller.organization_id)
        .bind(customer_id)
        .bind(from_at)
        .bind(after_at)
        .bind(after_id)
        .fetch_all(&state.pool)
        .await?
    } else {
        Vec::new()
    };
    let mut lines: Vec<StatementLine> = sqlx::query_as(
        "select p.id, e.currency::text as currency, e.occurred_at, e.id as entry_id,
                e.description, e.reference_type, e.reference_id, p.debit, p.credit
           from postings p join journal_entries e on e.id = p.entry_id
          where p.party_id = $2 and p.party_type = 'customer' and p.account_code = '1200'
            and p.organization_id = $1
            and ($3::timestamptz is null or e.occurred_at >= $3)
            and ($4::timestamptz is null or e.occurred_at < $4)
            and ($5::timestamptz is null or (e.occurred_at, p.id) > ($5, $6))
          order by e.occurred_at, p.id
          limit $7",
    )
    .bind(caller.organization_id)
    .bind(customer_id)
    .bind(from_at)
    .bind(to_end)
    .bind(after_at)
    .bind(after_id)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next = page.finish(&mut lines, |l| (l.occurred_at, l.id));

    // currency -> (opening, running balance, lines)
    let mut by_currency: std::collections::BTreeMap<String, (Decimal, Decimal, Vec<Value>)> =
        opening
            .into_iter()
            .map(|(c, o)| (c, (o, o, Vec::new())))
            .collect();
    for l in lines {
        let slot = by_currency.entry(l.currency.clone()).or_insert((
            Decimal::ZERO,
            Decimal::ZERO,
            Vec::new(),
        ));
        slot.1 += l.debit - l.credit;
        slot.2.push(json!({
            "posting_id": l.id, "entry_id": l.entry_id, "date": l.occurred_at,
            "description": l.description, "reference_type": l.reference_type,
            "reference_id": l.reference_id, "currency": l.currency,
            "debit": money(l.debit), "credit": money(l.credit), "balance": money(slot.1),
        }));
    }
    let currencies: Vec<Value> = by_currency
        .into_iter()
        .map(|(currency, (opening, closing, lines))| {
            json!({
                "currency": currency,
                "opening_balance": money(opening),
                "lines": lines,
                "closing_balance": money(closing),
            })
        })
        .collect();
    Ok(Json(json!({
        "customer_id": customer_id,
        "from": from,
        "to": to,
        "currencies": currencies,
        "next": next,
    })))
}

/// One posting line with its entry, as the entries query returns them.
#[derive(sqlx::FromRow)]
struct EntryLine {
    id: Uuid,
    source_event_id: Uuid,
    reference_type: String,
    description: String,
    currency: String,
    occurred_at: chrono::DateTime<chrono::Utc>,
    account_code: String,
    party_type: Option<String>,
    party_id: Option<Uuid>,
    debit: Decimal,
    credit: Decimal,
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
    let page = PageRequest::<(DateTime<Utc>, Uuid)>::parse(q.limit.as_deref(), q.after.as_deref())?;
    let (after_at, after_id) = page.after.unzip();
    wait_for_ledger(&state, q.consistent_with.as_deref()).await?;
    let rows: Vec<EntryLine> = sqlx::query_as(
        "with page as (
             select * from journal_entries
              where organization_id = $1 and reference_id = $2
                and ($3::timestamptz is null or (occurred_at, id) > ($3, $4))
                and (reference_type <> 'salary' or $6)
              order by occurred_at, id
              limit $5
         )
         select e.id, e.source_event_id, e.reference_type, e.description, e.currency::text as currency,
                e.occurred_at, p.account_code, p.party_type, p.party_id, p.debit, p.credit
           from page e join postings p on p.entry_id = e.id
          order by e.occurred_at, e.id, p.id",
    )
    .bind(caller.organization_id)
    .bind(reference_id)
    .bind(after_at)
    .bind(after_id)
    .bind(page.fetch())
    .bind(
        dhanman_producers::payroll::SALARY_READERS.contains(&caller.role.as_str()),
    )
    .fetch_all(&state.pool)
    .await?;
    let mut entries: Vec<Value> = Vec::new();
    for r in rows {
        let line = json!({
            "account_code": r.account_code, "party_type": r.party_type, "party_id": r.party_id,
            "debit": money(r.debit), "credit": money(r.credit),
        });
        match entries.last_mut() {
            Some(last) if last["entry_id"] == json!(r.id) => {
                if let Some(lines) = last["lines"].as_array_mut() {
                    lines.push(line);
                }
            }
            _ => entries.push(json!({
                "entry_id": r.id, "source_event_id": r.source_event_id,
                "reference_type": r.reference_type, "reference_id": reference_id,
                "description": r.description, "currency": r.currency,
                "occurred_at": r.occurred_at, "lines": [line],
            })),
        }
    }
    let next = page.finish(&mut entries, |e| {
        (e["occurred_at"].clone(), e["entry_id"].clone())
    });
    Ok(Json(json!({ "entries": entries, "next": next })))
}
