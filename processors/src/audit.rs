//! The ledger auditor: checks the books against themselves and against the command side,
//! each check one set-based query, all of them in one read-only snapshot (REPEATABLE
//! READ), so that a ledger batch committing meanwhile is seen whole or not at all.
//!
//! | kind                  | what is wrong                                                          |
//! |-----------------------|------------------------------------------------------------------------|
//! | `unbalanced_entry`    | an entry whose debits differ from its credits, with fewer than two lines, or lines without an entry |
//! | `trial_balance`       | an organization's account balances (the trial balance) do not net to zero in a currency |
//! | `balance_mismatch`    | an `account_balances` or `party_balances` row differs from the sum of its postings (or is missing) |
//! | `missing_entry`       | an event the ledger consumed with a gate row (`processed_events`) that posts an entry has none (the ledger gates such events by their entries: a row for one is a defect) |
//! | `duplicate_entry`     | more than one entry for one reference (an invoice, its void, a payment, a salary, an order, a bill) |
//! | `orphan_entry`        | a reversal or correction of an entry that does not exist, or an invoice's reversal without the invoice's entry |
//! | `receivable_mismatch` | a customer's receivable (1200, party customer) differs from their invoices less payments less voids on the command side |
//!
//! Whether a consumed event posts is known from the command side's outbox row (its record
//! name): an event the ledger consumed that no outbox row of this database describes
//! (another service's) is left out of `missing_entry`; its entry, naming an invoice or
//! payment the command side does not have, shows as a `receivable_mismatch`.
//!
//! Retention prunes published outbox rows and old gate rows; entries are never pruned.
//! `missing_entry` therefore covers the events whose outbox rows are kept; the other checks
//! read only the books, balances and command-side rows, which are kept whole.
//!
//! The command side runs ahead of the books while events are in flight: the receivable
//! check counts only the invoices, payments and voids whose events the ledger has consumed
//! (their entries, which are the ledger's record of having consumed them), so nothing in
//! flight is reported. The checks read whole tables (hash joins and aggregates, no query
//! per row): their cost grows with the postings, see docs/operations.md.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dhanman_schemas::events::{
    BillCreated, InvoiceCreated, InvoiceVoided, POApproved, PaymentReceived, Record, SalaryPosted,
};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::ledger::{self, correct};

pub const UNBALANCED_ENTRY: &str = "unbalanced_entry";
pub const TRIAL_BALANCE: &str = "trial_balance";
pub const BALANCE_MISMATCH: &str = "balance_mismatch";
pub const MISSING_ENTRY: &str = "missing_entry";
pub const DUPLICATE_ENTRY: &str = "duplicate_entry";
pub const ORPHAN_ENTRY: &str = "orphan_entry";
pub const RECEIVABLE_MISMATCH: &str = "receivable_mismatch";

/// Every kind of violation, in the order the checks run.
pub const KINDS: &[&str] = &[
    UNBALANCED_ENTRY,
    TRIAL_BALANCE,
    BALANCE_MISMATCH,
    MISSING_ENTRY,
    DUPLICATE_ENTRY,
    ORPHAN_ENTRY,
    RECEIVABLE_MISMATCH,
];

/// Gauge, label `kind`: violations the last audit found; every kind is set each run (0
/// when clean).
pub const METRIC: &str = "dhanman_ledger_audit_violations";

/// The ledger processor's name in `processed_events`.
const LEDGER: &str = "ledger";

/// The records the ledger posts an entry for (`ledger::entry_for`).
const POSTING_EVENTS: &[&str] = &[
    <InvoiceCreated as Record>::NAME,
    <InvoiceVoided as Record>::NAME,
    <PaymentReceived as Record>::NAME,
    <SalaryPosted as Record>::NAME,
    <POApproved as Record>::NAME,
    <BillCreated as Record>::NAME,
];

/// The `reference_type` of the entries the receivable check reads (`ledger::entry_for`).
const REF_INVOICE: &str = "invoice";
const REF_INVOICE_VOID: &str = "invoice_void";
const REF_PAYMENT: &str = "payment";

/// What one audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub checked_at: DateTime<Utc>,
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// One of [`KINDS`].
    pub kind: &'static str,
    pub organization_id: Option<Uuid>,
    /// What is wrong: the entry id, the balance row, the event id, the customer id.
    pub subject: String,
    /// Expected against found, with exact decimals.
    pub detail: String,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Violations per kind, every kind of [`KINDS`] (0 included), in that order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        KINDS
            .iter()
            .map(|kind| {
                let n = self.violations.iter().filter(|v| v.kind == *kind).count();
                (*kind, n)
            })
            .collect()
    }

    /// One line: `audit: clean`, or `audit: 2 violations (balance_mismatch 1,
    /// receivable_mismatch 1)` naming each kind found.
    pub fn summary(&self) -> String {
        if self.is_clean() {
            return "audit: clean".to_string();
        }
        let n = self.violations.len();
        let kinds: Vec<String> = self
            .counts()
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        format!(
            "audit: {n} violation{} ({})",
            if n == 1 { "" } else { "s" },
            kinds.join(", ")
        )
    }
}

/// The audit's line in `/readyz`: `"not yet run"`, or the count of the latest report's
/// violations, when it ran and how many of each kind it found.
pub fn readiness(latest: Option<&AuditReport>) -> Value {
    let Some(report) = latest else {
        return json!("not yet run");
    };
    let by_kind: serde_json::Map<String, Value> = report
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| (kind.to_string(), json!(n)))
        .collect();
    json!({
        "violations": report.violations.len(),
        "checked_at": report.checked_at,
        "by_kind": by_kind,
    })
}

/// [`readiness`] of the report [`run_periodically`] keeps, as a function the API calls on
/// each `/readyz`.
pub fn readiness_probe(
    latest: Arc<RwLock<Option<AuditReport>>>,
) -> impl Fn() -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync + 'static {
    move || {
        let latest = latest.clone();
        Box::pin(async move { readiness(latest.read().await.as_ref()) })
    }
}

/// Sets [`METRIC`] for every kind.
pub fn export(report: &AuditReport) {
    for (kind, n) in report.counts() {
        metrics::gauge!(METRIC, "kind" => kind).set(n as f64);
    }
}

/// Audits every `interval` (the first at once): exports [`METRIC`], keeps the latest report
/// in `latest`, and logs each violation at warn when it first appears (once while it lasts).
/// A failed audit is logged and tried again at the next interval; this never returns.
///
/// It audits over a connection of its own to `pool`'s database, so that its snapshot of a
/// few seconds holds none of the pool's, and without sqlx's slow-statement warnings, which
/// every run over large books would raise.
pub async fn run_periodically(
    pool: PgPool,
    interval: Duration,
    latest: Arc<RwLock<Option<AuditReport>>>,
) {
    let options = (*pool.connect_options())
        .clone()
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged: HashSet<(&'static str, String)> = HashSet::new();
    loop {
        ticker.tick().await;
        let report = match audit(&pool).await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "ledger audit failed; trying again next interval");
                continue;
            }
        };
        export(&report);
        let (new, now) = newly_found(&logged, &report);
        for v in new {
            tracing::warn!(
                kind = v.kind,
                subject = %v.subject,
                organization_id = %v.organization_id.map(|o| o.to_string()).unwrap_or_default(),
                detail = %v.detail,
                "ledger audit violation"
            );
        }
        let cleared = logged.iter().filter(|key| !now.contains(*key)).count();
        if cleared > 0 {
            tracing::info!(
                cleared,
                violations = report.violations.len(),
                "ledger audit: violations no longer found"
            );
        }
        logged = now;
        *latest.write().await = Some(report);
    }
}

/// The violations of `report` not in `logged`, and the set to remember for the next run
/// (what `report` holds: a violation that goes away and comes back is logged again).
fn newly_found<'r>(
    logged: &HashSet<(&'static str, String)>,
    report: &'r AuditReport,
) -> (Vec<&'r Violation>, HashSet<(&'static str, String)>) {
    let mut now = HashSet::with_capacity(report.violations.len());
    let mut new = Vec::new();
    for v in &report.violations {
        let key = (v.kind, v.subject.clone());
        if !logged.contains(&key) && !now.contains(&key) {
            new.push(v);
        }
        now.insert(key);
    }
    (new, now)
}

/// Runs every check in one read-only REPEATABLE READ snapshot.
pub async fn audit(pool: &PgPool) -> Result<AuditReport, sqlx::Error> {
    let checked_at = Utc::now();
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    // The checks hash and aggregate whole tables: room to do it in memory.
    sqlx::query("set local work_mem = '32MB'")
        .execute(&mut *tx)
        .await?;
    let mut violations = Vec::new();
    violations.extend(unbalanced_entries(&mut tx).await?);
    violations.extend(trial_balance(&mut tx).await?);
    violations.extend(balance_mismatches(&mut tx).await?);
    violations.extend(missing_entries(&mut tx).await?);
    violations.extend(duplicate_entries(&mut tx).await?);
    violations.extend(orphan_entries(&mut tx).await?);
    violations.extend(receivable_mismatches(&mut tx).await?);
    tx.rollback().await?;
    Ok(AuditReport {
        checked_at,
        violations,
    })
}

/// An amount with at least its two places (a sum over no rows comes back as `0`).
fn money(mut d: Decimal) -> String {
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

/// Per entry: debits = credits, at least two lines, and an entry for every line. The
/// postings are grouped along their primary key (entry, line); an entry has one currency.
async fn unbalanced_entries(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    type Row = (
        Uuid,
        Option<Uuid>,
        Option<String>,
        Decimal,
        Decimal,
        i64,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select coalesce(j.id, s.entry_id),
                coalesce(j.organization_id,
                         (select p.organization_id from postings p
                           where p.entry_id = s.entry_id limit 1)),
                j.currency::text,
                coalesce(s.debits, 0), coalesce(s.credits, 0), coalesce(s.lines, 0),
                j.id is not null
           from journal_entries j
           full join (select entry_id, sum(debit) as debits, sum(credit) as credits,
                             count(*) as lines
                        from postings group by entry_id) s on s.entry_id = j.id
          where j.id is null or s.entry_id is null
             or s.debits <> s.credits or s.lines < 2
          order by 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(entry, org, currency, debits, credits, lines, known)| {
            let detail = if !known {
                format!(
                    "{lines} posting line(s) name no journal entry: debits {}, credits {}",
                    money(debits),
                    money(credits)
                )
            } else if lines == 0 {
                "the entry has no posting lines".to_string()
            } else {
                format!(
                    "debits {} <> credits {} ({}), {lines} line(s); expected equal, at least 2 lines",
                    money(debits),
                    money(credits),
                    currency.unwrap_or_default()
                )
            };
            Violation {
                kind: UNBALANCED_ENTRY,
                organization_id: org,
                subject: entry.to_string(),
                detail,
            }
        })
        .collect())
}

/// Per organization and currency, the account balances (what `/v1/trial-balance` serves)
/// net to zero.
async fn trial_balance(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    let rows: Vec<(Uuid, String, Decimal, Decimal)> = sqlx::query_as(
        "select organization_id, currency::text, sum(debit_total), sum(credit_total)
           from account_balances
          group by organization_id, currency
         having sum(debit_total) <> sum(credit_total)
          order by 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org, currency, debits, credits)| Violation {
            kind: TRIAL_BALANCE,
            organization_id: Some(org),
            subject: currency,
            detail: format!(
                "debits {} <> credits {}: off by {}; expected equal",
                money(debits),
                money(credits),
                money(debits - credits)
            ),
        })
        .collect())
}

/// Every balance row against the sum of its postings, both tables from one pass over the
/// postings (grouping sets); a row without postings must be zero, postings without a row
/// are a missing row.
async fn balance_mismatches(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    type Row = (
        String,
        Uuid,
        String,
        Option<String>,
        Option<Uuid>,
        String,
        Option<Decimal>,
        Option<Decimal>,
        Decimal,
        Decimal,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "with books as materialized (
             select p.organization_id, p.account_code, p.party_type, p.party_id, j.currency,
                    grouping(p.party_type, p.party_id) as per_account,
                    sum(p.debit) as debits, sum(p.credit) as credits
               from postings p join journal_entries j on j.id = p.entry_id
              group by grouping sets (
                    (p.organization_id, p.account_code, j.currency),
                    (p.organization_id, p.account_code, j.currency, p.party_type, p.party_id))
         )
         select 'account_balances', coalesce(b.organization_id, s.organization_id),
                coalesce(b.account_code, s.account_code), null::text, null::uuid,
                coalesce(b.currency, s.currency)::text,
                b.debit_total, b.credit_total, coalesce(s.debits, 0), coalesce(s.credits, 0)
           from account_balances b
           full join (select * from books where per_account <> 0) s
             on s.organization_id = b.organization_id and s.account_code = b.account_code
            and s.currency = b.currency
          where b.debit_total is distinct from coalesce(s.debits, 0)
             or b.credit_total is distinct from coalesce(s.credits, 0)
         union all
         select 'party_balances', coalesce(b.organization_id, s.organization_id),
                coalesce(b.account_code, s.account_code), coalesce(b.party_type, s.party_type),
                coalesce(b.party_id, s.party_id), coalesce(b.currency, s.currency)::text,
                b.debit_total, b.credit_total, coalesce(s.debits, 0), coalesce(s.credits, 0)
           from party_balances b
           full join (select * from books where per_account = 0 and party_id is not null) s
             on s.organization_id = b.organization_id and s.account_code = b.account_code
            and s.party_type = b.party_type and s.party_id = b.party_id
            and s.currency = b.currency
          where b.debit_total is distinct from coalesce(s.debits, 0)
             or b.credit_total is distinct from coalesce(s.credits, 0)
          order by 1, 2, 3, 4, 5, 6",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(table, org, account, ptype, pid, currency, debit, credit, debits, credits)| {
                let party = match (ptype, pid) {
                    (Some(t), Some(id)) => format!(" party {t} {id}"),
                    _ => String::new(),
                };
                let found = match (debit, credit) {
                    (Some(d), Some(c)) => {
                        format!("the row has debit {}, credit {}", money(d), money(c))
                    }
                    _ => "there is no row".to_string(),
                };
                Violation {
                    kind: BALANCE_MISMATCH,
                    organization_id: Some(org),
                    subject: format!("{table} account {account}{party} {currency}"),
                    detail: format!(
                        "postings sum to debit {}, credit {}; {found}",
                        money(debits),
                        money(credits)
                    ),
                }
            },
        )
        .collect())
}

/// Events the ledger consumed that post an entry (by their outbox row's record name) and
/// have none. The gate row and the entry commit together, so in-flight events are not
/// here.
async fn missing_entries(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<String>, String, String, i32, i64)> = sqlx::query_as(
        "select pe.event_id, o.payload->>'organization_id', o.record_name, pe.topic,
                pe.partition, pe.\"offset\"
           from processed_events pe
           join outbox o on o.event_id = pe.event_id
          where pe.processor = $1 and o.record_name = any($2)
            and not exists (select 1 from journal_entries j where j.id = pe.event_id)
          order by 1",
    )
    .bind(LEDGER)
    .bind(POSTING_EVENTS)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(event, org, record, topic, partition, offset)| Violation {
            kind: MISSING_ENTRY,
            organization_id: org.and_then(|o| o.parse().ok()),
            subject: event.to_string(),
            detail: format!(
                "{record} consumed from {topic} [{partition}] at offset {offset}: \
                 expected 1 journal entry, found 0"
            ),
        })
        .collect())
}

/// One entry per reference and kind of entry: an invoice has one entry and at most one
/// reversal (`invoice_void`), a payment, salary, order or bill one entry. (One entry per
/// event is the primary key's.)
async fn duplicate_entries(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    let rows: Vec<(Uuid, String, Uuid, i64, String)> = sqlx::query_as(
        "select organization_id, reference_type, reference_id, count(*),
                string_agg(id::text, ', ' order by id)
           from journal_entries
          group by organization_id, reference_type, reference_id
         having count(*) > 1
          order by 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org, rtype, rid, n, ids)| Violation {
            kind: DUPLICATE_ENTRY,
            organization_id: Some(org),
            subject: format!("{rtype} {rid}"),
            detail: format!("expected 1 entry, found {n}: {ids}"),
        })
        .collect())
}

/// Reversals of an invoice that has no entry, and corrections (reversals and corrected
/// entries) of an entry that does not exist.
///
/// (An entry of the ledger's own is its record of having consumed its event: the entry's
/// id is the event's, and the entry is the event's gate in `applied_events`. There is no
/// second row for it to lack.)
async fn orphan_entries(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String, Uuid)> = sqlx::query_as(
        "select c.id, c.organization_id, c.reference_type, c.reference_id
           from journal_entries c
          where c.reference_type in ($3, $4)
            and not exists (select 1 from journal_entries x
                             where x.organization_id = c.organization_id
                               and x.id = c.reference_id)
         union all
         select v.id, v.organization_id, v.reference_type, v.reference_id
           from journal_entries v
          where v.reference_type = $2
            and not exists (select 1 from journal_entries i
                             where i.organization_id = v.organization_id
                               and i.reference_id = v.reference_id
                               and i.reference_type = $1)
          order by 1",
    )
    .bind(REF_INVOICE)
    .bind(REF_INVOICE_VOID)
    .bind(correct::REVERSAL)
    .bind(correct::CORRECTION)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(entry, org, rtype, rid)| Violation {
            kind: ORPHAN_ENTRY,
            organization_id: Some(org),
            subject: entry.to_string(),
            detail: if rtype == REF_INVOICE_VOID {
                format!("reverses invoice {rid}, which has no entry")
            } else {
                format!("{rtype} of entry {rid}, which does not exist")
            },
        })
        .collect())
}

/// Per customer and currency: the receivable in the books (`party_balances`, 1200, party
/// customer; checked against the postings by [`balance_mismatches`]) against the command
/// side's invoices less payments less voided invoices, each counted only once the ledger
/// has consumed its event. An event's entry is the ledger's record of having consumed it
/// (its gate, see [`orphan_entries`]), and names the invoice or payment it posts
/// (`reference_id`): so no payload is parsed. The amounts, customers and currencies
/// are the command side's rows; a void takes its invoice's amount.
async fn receivable_mismatches(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    type Row = (
        Uuid,
        Uuid,
        String,
        Decimal,
        Decimal,
        Decimal,
        Option<Decimal>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "with command_side as (
             select organization_id, customer_id, currency,
                    sum(invoiced) as invoiced, sum(paid) as paid, sum(voided) as voided
               from (select i.organization_id, i.customer_id, i.currency,
                            case when j.reference_type = $1 then i.amount else 0 end as invoiced,
                            0::numeric as paid,
                            case when j.reference_type = $2 then i.amount else 0 end as voided
                       from journal_entries j
                       join invoices i
                         on i.id = j.reference_id and i.organization_id = j.organization_id
                      where j.reference_type in ($1, $2)
                     union all
                     select p.organization_id, p.customer_id, p.currency, 0, p.amount, 0
                       from journal_entries j
                       join payments p
                         on p.id = j.reference_id and p.organization_id = j.organization_id
                      where j.reference_type = $3) lines
              group by organization_id, customer_id, currency
         ), books as (
             select organization_id, party_id as customer_id, currency,
                    debit_total - credit_total as receivable
               from party_balances
              where account_code = $4 and party_type = 'customer'
         )
         select coalesce(c.organization_id, b.organization_id),
                coalesce(c.customer_id, b.customer_id),
                coalesce(c.currency, b.currency)::text,
                coalesce(c.invoiced, 0), coalesce(c.paid, 0), coalesce(c.voided, 0),
                b.receivable
           from command_side c
           full join books b
             on b.organization_id = c.organization_id and b.customer_id = c.customer_id
            and b.currency = c.currency
          where coalesce(c.invoiced - c.paid - c.voided, 0) <> coalesce(b.receivable, 0)
          order by 1, 2, 3",
    )
    .bind(REF_INVOICE)
    .bind(REF_INVOICE_VOID)
    .bind(REF_PAYMENT)
    .bind(ledger::AR)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(org, customer, currency, invoiced, paid, voided, receivable)| Violation {
                kind: RECEIVABLE_MISMATCH,
                organization_id: Some(org),
                subject: customer.to_string(),
                detail: receivable_detail(&currency, invoiced, paid, voided, receivable),
            },
        )
        .collect())
}

fn receivable_detail(
    currency: &str,
    invoiced: Decimal,
    paid: Decimal,
    voided: Decimal,
    receivable: Option<Decimal>,
) -> String {
    let books = match receivable {
        Some(r) => money(r),
        None => "none (no party balance)".to_string(),
    };
    format!(
        "{currency}: command side invoiced {} - paid {} - voided {} = {}; books (account {}, party customer) {books}",
        money(invoiced),
        money(paid),
        money(voided),
        money(invoiced - paid - voided),
        ledger::AR
    )
}

#[cfg(test)]
mod tests;
