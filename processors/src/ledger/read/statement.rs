//! A customer's statement: the receivable's (account [`AR`]) lines between two days, with
//! a running balance per currency, a page of lines at a time. Each currency's opening
//! balance is its balance before the page's first line (on the first page, before `from`)
//! and its closing balance the balance after the page's last line.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::money;
use crate::ledger::AR;

/// A page's sort key: the line's entry's time, then the posting's id.
pub type LineKey = (DateTime<Utc>, i64);

/// One posting to the customer's receivable, with its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub posting_id: i64,
    pub entry_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub description: String,
    pub reference_type: String,
    pub reference_id: Uuid,
    pub currency: String,
    pub debit: Decimal,
    pub credit: Decimal,
}

impl Line {
    pub fn key(&self) -> LineKey {
        (self.occurred_at, self.posting_id)
    }
}

/// What [`statement`] read: the balances before the page and the page's lines (as many as
/// asked for, in key order). Cut `lines` to the page, then [`Statement::currencies`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub opening: Vec<(String, Decimal)>,
    pub lines: Vec<Line>,
}

/// A statement line as served: the posting and the running balance after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    pub posting_id: i64,
    pub entry_id: Uuid,
    pub date: DateTime<Utc>,
    pub description: String,
    pub reference_type: String,
    pub reference_id: Uuid,
    pub currency: String,
    pub debit: Decimal,
    pub credit: Decimal,
    pub balance: Decimal,
}

/// One currency of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementCurrency {
    pub currency: String,
    pub opening_balance: Decimal,
    pub lines: Vec<StatementLine>,
    pub closing_balance: Decimal,
}

/// Start of a UTC day: statement dates are days of `occurred_at` in UTC.
fn day_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

/// Reads the customer's receivable lines from day `from` to day `to` (both inclusive,
/// either open), the `fetch` first after `after`, and the balances before them.
pub async fn statement(
    pool: &PgPool,
    organization_id: Uuid,
    customer_id: Uuid,
    (from, to): (Option<NaiveDate>, Option<NaiveDate>),
    after: Option<LineKey>,
    fetch: i64,
) -> sqlx::Result<Statement> {
    let from_at = from.map(day_start);
    // `to` is inclusive: everything before the start of the next day.
    let to_end = to.and_then(|d| d.succ_opt()).map(day_start);
    let (after_at, after_id) = after.unzip();
    // Everything before the page: before `from`, and the pages already read.
    let opening = if from_at.is_some() || after_at.is_some() {
        sqlx::query!(
            r#"select e.currency::text as "currency!", sum(p.debit - p.credit) as "balance!"
                 from postings p join journal_entries e on e.id = p.entry_id
                where p.party_id = $2 and p.party_type = 'customer'
                  and p.account_code = $6 and p.organization_id = $1
                  and (e.occurred_at < $3 or (e.occurred_at, p.id) <= ($4, $5))
                group by e.currency"#,
            organization_id,
            customer_id,
            from_at,
            after_at,
            after_id,
            AR
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.currency, r.balance))
        .collect()
    } else {
        Vec::new()
    };
    let lines = sqlx::query!(
        r#"select p.id, e.currency::text as "currency!", e.occurred_at, e.id as entry_id,
                  e.description, e.reference_type, e.reference_id, p.debit, p.credit
             from postings p join journal_entries e on e.id = p.entry_id
            where p.party_id = $2 and p.party_type = 'customer' and p.account_code = $8
              and p.organization_id = $1
              and ($3::timestamptz is null or e.occurred_at >= $3)
              and ($4::timestamptz is null or e.occurred_at < $4)
              and ($5::timestamptz is null or (e.occurred_at, p.id) > ($5, $6))
            order by e.occurred_at, p.id
            limit $7"#,
        organization_id,
        customer_id,
        from_at,
        to_end,
        after_at,
        after_id,
        fetch,
        AR
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| Line {
        posting_id: r.id,
        entry_id: r.entry_id,
        occurred_at: r.occurred_at,
        description: r.description,
        reference_type: r.reference_type,
        reference_id: r.reference_id,
        currency: r.currency,
        debit: r.debit,
        credit: r.credit,
    })
    .collect();
    Ok(Statement { opening, lines })
}

impl Statement {
    /// The statement per currency, in currency order, with running balances.
    pub fn currencies(self) -> Vec<StatementCurrency> {
        // currency -> (opening, running balance, lines)
        let mut by_currency: BTreeMap<String, (Decimal, Decimal, Vec<StatementLine>)> = self
            .opening
            .into_iter()
            .map(|(c, o)| (c, (o, o, Vec::new())))
            .collect();
        for l in self.lines {
            let slot = by_currency.entry(l.currency.clone()).or_insert((
                Decimal::ZERO,
                Decimal::ZERO,
                Vec::new(),
            ));
            slot.1 += l.debit - l.credit;
            slot.2.push(StatementLine {
                posting_id: l.posting_id,
                entry_id: l.entry_id,
                date: l.occurred_at,
                description: l.description,
                reference_type: l.reference_type,
                reference_id: l.reference_id,
                currency: l.currency,
                debit: money(l.debit),
                credit: money(l.credit),
                balance: money(slot.1),
            });
        }
        by_currency
            .into_iter()
            .map(|(currency, (opening, closing, lines))| StatementCurrency {
                currency,
                opening_balance: money(opening),
                lines,
                closing_balance: money(closing),
            })
            .collect()
    }
}
