//! The ledger's read side: what the API serves from the books the poster keeps —
//! balances (the poster materializes them: [`account_balances`], [`customer_with_balances`]),
//! the [`trial_balance`], a customer's [`statement()`] and the [`entries()`] of a reference.
//! Every read of the books is scoped to one organization (the chart of accounts,
//! [`account`], is shared); money comes back with two decimal places, as the API shows it.
//!
//! The structs serialize to the API's JSON bodies. The API renders them through
//! `serde_json::Value`, whose object keys are sorted, so the order of fields here is not
//! the order in a body. The HTTP concerns (parameters, 4xx, authorization, page cursors)
//! stay in the API.

pub mod entries;
pub mod statement;

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::AR;
pub use entries::{Entry, entries};
pub use statement::{Statement, StatementCurrency, StatementLine, statement};

/// The ledger's name in the gate (`applied_events`), for consistency waits.
pub const LEDGER: &str = "ledger";

/// An account of the chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    #[serde(rename = "account_code")]
    pub code: String,
    pub name: String,
    /// `asset`, `liability`, `equity`, `revenue` or `expense`.
    #[serde(rename = "type")]
    pub account_type: String,
}

/// One currency of an account's balance: its totals and the net on its normal side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountBalance {
    pub currency: String,
    pub debit_total: Decimal,
    pub credit_total: Decimal,
    pub balance: Decimal,
}

/// One currency of a customer's receivable (account [`AR`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivableBalance {
    pub currency: String,
    pub invoiced: Decimal,
    pub settled: Decimal,
    pub balance: Decimal,
}

/// Money as the API shows it: always two decimal places (Postgres hands back a zero
/// without them).
pub(crate) fn money(mut d: Decimal) -> Decimal {
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

/// The account `code` of the chart, if there is one.
pub async fn account(pool: &PgPool, code: &str) -> sqlx::Result<Option<Account>> {
    let found = sqlx::query!(
        "select name, type as account_type from accounts where code = $1",
        code
    )
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|r| Account {
        code: code.to_string(),
        name: r.name,
        account_type: r.account_type,
    }))
}

/// The organization's balances of `account`, one per currency, in currency order.
pub async fn account_balances(
    pool: &PgPool,
    organization_id: Uuid,
    account: &Account,
) -> sqlx::Result<Vec<AccountBalance>> {
    let rows = sqlx::query!(
        r#"select currency::text as "currency!", debit_total, credit_total
             from account_balances
            where organization_id = $1 and account_code = $2 order by currency"#,
        organization_id,
        account.code
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AccountBalance {
            balance: money(normal_balance(
                &account.account_type,
                r.debit_total,
                r.credit_total,
            )),
            currency: r.currency,
            debit_total: money(r.debit_total),
            credit_total: money(r.credit_total),
        })
        .collect())
}

/// The customer's name and receivable (one row per currency, in currency order), if the
/// customer is the organization's: one statement.
pub async fn customer_with_balances(
    pool: &PgPool,
    organization_id: Uuid,
    customer_id: Uuid,
) -> sqlx::Result<Option<(String, Vec<ReceivableBalance>)>> {
    type Line = (String, Option<String>, Option<Decimal>, Option<Decimal>);
    let lines: Vec<Line> = sqlx::query_as(
        "select c.name, b.currency::text, b.debit_total, b.credit_total
           from customers c
           left join party_balances b
             on b.organization_id = c.organization_id and b.account_code = $3
            and b.party_type = 'customer' and b.party_id = c.id
          where c.id = $1 and c.organization_id = $2
          order by b.currency",
    )
    .bind(customer_id)
    .bind(organization_id)
    .bind(AR)
    .fetch_all(pool)
    .await?;
    let Some(name) = lines.first().map(|(name, ..)| name.clone()) else {
        return Ok(None);
    };
    let balances = lines
        .into_iter()
        .filter_map(|(_, currency, debit, credit)| {
            let (debit, credit) = (debit?, credit?);
            Some(ReceivableBalance {
                currency: currency?,
                invoiced: money(debit),
                settled: money(credit),
                balance: money(debit - credit),
            })
        })
        .collect();
    Ok(Some((name, balances)))
}

/// An account's line of the trial balance: its net on the debit or the credit side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialAccount {
    #[serde(flatten)]
    pub account: Account,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// The totals of one account type, with the net on the type's normal side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeTotal {
    #[serde(rename = "type")]
    pub account_type: String,
    pub debit: Decimal,
    pub credit: Decimal,
    pub balance: Decimal,
}

/// One currency's column of the trial balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialCurrency {
    pub currency: String,
    /// In account code order.
    pub accounts: Vec<TrialAccount>,
    pub total_debit: Decimal,
    pub total_credit: Decimal,
    pub balanced: bool,
    /// In chart order: assets, liabilities, equity, revenue, expenses.
    pub by_type: Vec<TypeTotal>,
}

/// The organization's trial balance, one column per currency, in currency order.
pub async fn trial_balance(
    pool: &PgPool,
    organization_id: Uuid,
) -> sqlx::Result<Vec<TrialCurrency>> {
    let rows = sqlx::query!(
        r#"select a.code, a.name, a.type as account_type, b.currency::text as "currency!",
                  b.debit_total, b.credit_total
             from account_balances b join accounts a on a.code = b.account_code
            where b.organization_id = $1 order by b.currency, a.code"#,
        organization_id
    )
    .fetch_all(pool)
    .await?;

    /// A currency's column while it is summed.
    #[derive(Default)]
    struct Column {
        accounts: Vec<TrialAccount>,
        debits: Decimal,
        credits: Decimal,
        /// (type, debit, credit) per account type, keyed in chart order.
        by_type: BTreeMap<u8, (String, Decimal, Decimal)>,
    }

    let mut by_currency: BTreeMap<String, Column> = BTreeMap::new();
    for r in rows {
        let net = r.debit_total - r.credit_total;
        let (dr, cr) = if net >= Decimal::ZERO {
            (net, Decimal::ZERO)
        } else {
            (Decimal::ZERO, -net)
        };
        let column = by_currency.entry(r.currency).or_default();
        column.debits += dr;
        column.credits += cr;
        let totals = column.by_type.entry(type_rank(&r.account_type)).or_insert((
            r.account_type.clone(),
            Decimal::ZERO,
            Decimal::ZERO,
        ));
        totals.1 += dr;
        totals.2 += cr;
        column.accounts.push(TrialAccount {
            account: Account {
                code: r.code,
                name: r.name,
                account_type: r.account_type,
            },
            debit: money(dr),
            credit: money(cr),
        });
    }
    Ok(by_currency
        .into_iter()
        .map(|(currency, column)| TrialCurrency {
            currency,
            accounts: column.accounts,
            total_debit: money(column.debits),
            total_credit: money(column.credits),
            balanced: column.debits == column.credits,
            by_type: column
                .by_type
                .into_values()
                .map(|(account_type, dr, cr)| TypeTotal {
                    balance: money(normal_balance(&account_type, dr, cr)),
                    account_type,
                    debit: money(dr),
                    credit: money(cr),
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Processor;
    use crate::ledger::Ledger;

    #[test]
    fn the_gate_name_is_the_processors() {
        assert_eq!(Ledger::default().name(), LEDGER);
    }

    #[test]
    fn balances_sit_on_the_normal_side_and_show_two_places() {
        let (dr, cr) = (Decimal::new(500, 0), Decimal::new(2000, 1));
        assert_eq!(normal_balance("asset", dr, cr), Decimal::new(300, 0));
        assert_eq!(normal_balance("liability", dr, cr), Decimal::new(-300, 0));
        assert_eq!(money(Decimal::ZERO).to_string(), "0.00");
        let mut types = ["expense", "asset", "revenue", "liability", "equity"];
        types.sort_by_key(|t| type_rank(t));
        assert_eq!(
            types,
            ["asset", "liability", "equity", "revenue", "expense"]
        );
    }
}
