//! Rebuilding the materialized balances from the immutable postings: the ledger's
//! projection, recomputed into shadow tables and swapped in atomically while the pipeline
//! runs. The swap's transaction first takes an EXCLUSIVE lock on both balance tables (in
//! the order the ledger writes them): a ledger batch that already touched them finishes
//! first, one that has not waits (its postings are not committed, so not counted, and it
//! adds them to the rebuilt rows after). Readers are never blocked and see the old
//! balances or the new ones, nothing between.

use serde::Serialize;
use sqlx::PgPool;

/// What a rebuild found (and, executed, replaced).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub account_rows: i64,
    pub party_rows: i64,
    /// Rows whose totals differ between the live table and the postings (or exist in one).
    pub account_differences: i64,
    pub party_differences: i64,
    /// Up to ten differing rows per table, as (table, key, live, rebuilt).
    pub samples: Vec<serde_json::Value>,
    pub executed: bool,
}

/// Recomputes both balance tables from the postings; swaps them in when `execute`.
pub async fn rebuild(pool: &PgPool, execute: bool) -> Result<RebuildReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // In the order a ledger batch writes them (party rows, then account rows): the other
    // order deadlocks with a batch that has written its party rows and not yet its accounts.
    sqlx::query("lock table party_balances, account_balances in exclusive mode")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "create temp table account_balances_shadow on commit drop as
         select p.organization_id, p.account_code, j.currency,
                sum(p.debit) as debit_total, sum(p.credit) as credit_total
           from postings p join journal_entries j on j.id = p.entry_id
          group by p.organization_id, p.account_code, j.currency",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "create temp table party_balances_shadow on commit drop as
         select p.organization_id, p.account_code, p.party_type, p.party_id, j.currency,
                sum(p.debit) as debit_total, sum(p.credit) as credit_total
           from postings p join journal_entries j on j.id = p.entry_id
          where p.party_id is not null
          group by p.organization_id, p.account_code, p.party_type, p.party_id, j.currency",
    )
    .execute(&mut *tx)
    .await?;
    // Table and key names are the constants below, never input.
    let diff = |table: &str, keys: &str| {
        format!(
            "select jsonb_build_object('table', '{table}',
                    'key', coalesce(to_jsonb(l), to_jsonb(s)) - 'debit_total' - 'credit_total' - 'updated_at',
                    'live', jsonb_build_object('debit', l.debit_total, 'credit', l.credit_total),
                    'rebuilt', jsonb_build_object('debit', s.debit_total, 'credit', s.credit_total))
               from {table} l full join {table}_shadow s using ({keys})
              where l.debit_total is distinct from s.debit_total
                 or l.credit_total is distinct from s.credit_total"
        )
    };
    let account = diff(
        "account_balances",
        "organization_id, account_code, currency",
    );
    let party = diff(
        "party_balances",
        "organization_id, account_code, party_type, party_id, currency",
    );
    let mut report = RebuildReport {
        executed: execute,
        ..RebuildReport::default()
    };
    for (sql, count) in [
        (&account, &mut report.account_differences),
        (&party, &mut report.party_differences),
    ] {
        let rows: Vec<(serde_json::Value,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&mut *tx)
            .await?;
        *count = rows.len() as i64;
        report
            .samples
            .extend(rows.into_iter().take(10).map(|(v,)| v));
    }
    (report.account_rows,) = sqlx::query_as("select count(*) from account_balances_shadow")
        .fetch_one(&mut *tx)
        .await?;
    (report.party_rows,) = sqlx::query_as("select count(*) from party_balances_shadow")
        .fetch_one(&mut *tx)
        .await?;
    if !execute {
        tx.rollback().await?;
        return Ok(report);
    }
    for sql in [
        "delete from account_balances",
        "insert into account_balances (organization_id, account_code, currency, debit_total, credit_total)
         select organization_id, account_code, currency, debit_total, credit_total
           from account_balances_shadow",
        "delete from party_balances",
        "insert into party_balances
             (organization_id, account_code, party_type, party_id, currency, debit_total, credit_total)
         select organization_id, account_code, party_type, party_id, currency, debit_total, credit_total
           from party_balances_shadow",
    ] {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(report)
}
