//! The ledger poster: turns sales and payroll events into balanced journal entries,
//! materializes account and party balances in the same transaction, and announces each
//! entry as `LedgerEntryPosted` for downstream readers (the record written to the outbox
//! with the entry: the ledger writes what it announces).
//!
//! | event           | debit                         | credit                        |
//! |-----------------|-------------------------------|-------------------------------|
//! | InvoiceCreated  | 1200 AR (party: customer)     | 4000 Maintenance Revenue      |
//! | PaymentReceived | 1000 Bank                     | 1200 AR (party: customer)     |
//! | InvoiceVoided   | 4000 Maintenance Revenue      | 1200 AR (party: customer)     |
//! | SalaryPosted    | 5100 Salary Expense           | 2200 Salaries Payable (party: employee) |
//! | POApproved      | 5900 Budget Commitments       | 2100 Reserved Budget          |
//! | BillCreated     | 5000 Expenses                 | 2000 Accounts Payable (party: vendor) |
//! | … against a PO  | also 2100 Reserved Budget     | also 5900 Budget Commitments (the release) |
//!
//! A bill never exceeds its order (the command side refuses it), so a bill's release is
//! its own amount and the reservation never goes below zero.
//!
//! The codes are defaults: a deployment may move any but the receivable ([`Accounts`]).
//! A change applies to what is posted from then on; [`correct`] brings the entries posted
//! before it under the new rules, by reversal and re-posting, never by editing.

pub mod accounts;
pub mod correct;
pub mod read;
mod voids;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dhanman_plumbing::outbox;
use dhanman_schemas::Event;
use dhanman_schemas::events::{Envelope, LedgerEntryPosted, PostingLine};
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{Applied, ApplyError, Processor};
pub use accounts::Accounts;

pub const AR: &str = "1200";
pub const BANK: &str = "1000";
pub const REVENUE: &str = "4000";
pub const SALARIES_PAYABLE: &str = "2200";
pub const SALARY_EXPENSE: &str = "5100";
pub const EXPENSES: &str = "5000";
pub const PAYABLE: &str = "2000";
pub const RESERVED_BUDGET: &str = "2100";
pub const COMMITMENTS: &str = "5900";

/// The ledger processor. Reads the sales and payroll topics unless told otherwise
/// (benchmarks and replays point it at other topics).
pub struct Ledger {
    topics: Vec<String>,
    accounts: Accounts,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            topics: vec![
                topics::INVOICES.to_string(),
                topics::PAYMENTS.to_string(),
                topics::SALARIES.to_string(),
                topics::PURCHASE_ORDERS.to_string(),
                topics::BILLS.to_string(),
            ],
            accounts: Accounts::default(),
        }
    }
}

impl Ledger {
    pub fn with_topics(topics: Vec<String>) -> Self {
        Ledger {
            topics,
            accounts: Accounts::default(),
        }
    }

    /// The same ledger posting under `accounts`.
    pub fn with_accounts(self, accounts: Accounts) -> Self {
        Ledger { accounts, ..self }
    }
}

/// A journal entry before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: Uuid,
    pub source: Envelope,
    pub reference_type: &'static str,
    pub reference_id: Uuid,
    pub description: String,
    pub currency: String,
    pub lines: Vec<PostingLine>,
}

/// Whom a line is owed by or to: (party type, party id).
type Party = Option<(&'static str, Uuid)>;

fn customer(id: Uuid) -> Party {
    Some(("customer", id))
}

fn employee(id: Uuid) -> Party {
    Some(("employee", id))
}

fn vendor(id: Uuid) -> Party {
    Some(("vendor", id))
}

fn line(account: &str, party: Party, debit: Decimal, credit: Decimal) -> PostingLine {
    PostingLine {
        account_code: account.to_string(),
        party_type: party.map(|(t, _)| t.to_string()),
        party_id: party.map(|(_, id)| id),
        debit,
        credit,
    }
}

/// Whether `event` posts an entry ([`entry_under`] gives one for it, under any accounts).
pub fn posts_entry(event: &Event) -> bool {
    matches!(
        event,
        Event::InvoiceCreated(_)
            | Event::PaymentReceived(_)
            | Event::InvoiceVoided(_)
            | Event::SalaryPosted(_)
            | Event::POApproved(_)
            | Event::BillCreated(_)
    )
}

/// The entry an event posts under the default accounts, if any.
pub fn entry_for(event: &Event) -> Option<Entry> {
    entry_under(&accounts::DEFAULT, event)
}

/// The entry an event posts under `accounts`, if any. Pure: the table above, in code.
pub fn entry_under(accounts: &Accounts, event: &Event) -> Option<Entry> {
    let a = accounts;
    let (reference_type, reference_id, description, currency, lines) = match event {
        Event::InvoiceCreated(e) => (
            "invoice",
            e.invoice_id,
            format!("Invoice {}", e.invoice_number),
            &e.currency,
            vec![
                line(AR, customer(e.customer_id), e.amount, Decimal::ZERO),
                line(&a.revenue, None, Decimal::ZERO, e.amount),
            ],
        ),
        Event::PaymentReceived(e) => (
            "payment",
            e.payment_id,
            format!("Payment {} ({})", e.payment_id, e.method),
            &e.currency,
            vec![
                line(&a.bank, None, e.amount, Decimal::ZERO),
                line(AR, customer(e.customer_id), Decimal::ZERO, e.amount),
            ],
        ),
        Event::InvoiceVoided(e) => (
            "invoice_void",
            e.invoice_id,
            match e.reason.as_str() {
                "" => format!("Void of invoice {}", e.invoice_id),
                reason => format!("Void of invoice {}: {reason}", e.invoice_id),
            },
            &e.currency,
            vec![
                line(&a.revenue, None, e.amount, Decimal::ZERO),
                line(AR, customer(e.customer_id), Decimal::ZERO, e.amount),
            ],
        ),
        Event::SalaryPosted(e) => (
            "salary",
            e.salary_id,
            format!("Salary {} of employee {}", e.period, e.employee_id),
            &e.currency,
            vec![
                line(&a.salary_expense, None, e.amount, Decimal::ZERO),
                line(
                    &a.salaries_payable,
                    employee(e.employee_id),
                    Decimal::ZERO,
                    e.amount,
                ),
            ],
        ),
        Event::POApproved(e) => (
            "purchase_order",
            e.po_id,
            format!("Budget reserved for purchase order {}", e.po_id),
            &e.currency,
            vec![
                line(&a.commitments, None, e.amount, Decimal::ZERO),
                line(&a.reserved_budget, None, Decimal::ZERO, e.amount),
            ],
        ),
        Event::BillCreated(e) => {
            let mut lines = vec![
                line(&a.expenses, None, e.amount, Decimal::ZERO),
                line(&a.payable, vendor(e.vendor_id), Decimal::ZERO, e.amount),
            ];
            if e.po_id.is_some() {
                lines.push(line(&a.reserved_budget, None, e.amount, Decimal::ZERO));
                lines.push(line(&a.commitments, None, Decimal::ZERO, e.amount));
            }
            let description = match e.po_id {
                Some(po) => format!("Bill {} against purchase order {po}", e.bill_id),
                None => format!("Bill {}", e.bill_id),
            };
            ("bill", e.bill_id, description, &e.currency, lines)
        }
        Event::PaymentFailed(_)
        | Event::POSubmitted(_)
        | Event::PORejected(_)
        | Event::UserCreated(_)
        | Event::SendApprovalRequest(_)
        | Event::SendInvoiceEmail(_)
        | Event::SendPaymentReceipt(_)
        | Event::SendPaymentReminder(_)
        | Event::LedgerEntryPosted(_)
        | Event::Other { .. } => return None,
    };
    let source = event.envelope().clone();
    Some(Entry {
        // The source event's id: the same event can only ever make this entry, and event
        // ids are time-ordered (v7), which keeps the primary key's inserts at its right edge.
        id: source.event_id,
        source,
        reference_type,
        reference_id,
        description,
        currency: currency.clone(),
        lines,
    })
}

impl Processor for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    /// An event that posts an entry is gated by it: the entry's id is the event's, and the
    /// journal's primary key takes no second (`applied_events` shows the entry as the
    /// event applied). Only the events that post nothing get a `processed_events` row.
    /// [`post`] leaves out an entry already in the journal; its event counts as applied
    /// before.
    fn gated_by_effects(&self, event: &Event) -> bool {
        posts_entry(event)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        let entries: Vec<Entry> = events
            .iter()
            .filter_map(|e| entry_under(&self.accounts, e))
            .collect();
        voids::check(conn, &entries).await?;
        let posted = post(conn, &entries).await?;
        for entry in &posted {
            tracing::info!(
                correlation_id = %entry.source.correlation_id,
                event_id = %entry.source.event_id,
                entry_id = %entry.id,
                reference = %entry.reference_id,
                "posted journal entry"
            );
        }
        Ok(Applied {
            before: entries.len() - posted.len(),
        })
    }
}

/// [`post`]'s first statement: the entries (`$1` to `$9`, posted at `$10`), the postings of
/// those it inserted (`$11` to `$17`), the parties' balances summed from them, and the
/// announcements of those entries ([`outbox::insert_rows`] from `$18`); the ids of the
/// entries it inserted. The postings' balance check runs after the whole statement.
static POST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with entry as (
         insert into journal_entries (id, organization_id, source_event_id, reference_type,
                                      reference_id, description, currency, occurred_at,
                                      correlation_id, posted_at)
         select *, $10::timestamptz
           from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::text[],
                       $7::text[], $8::timestamptz[], $9::text[])
         on conflict (id) do nothing
         returning id, currency),
     posting as (
         insert into postings (entry_id, organization_id, account_code, party_type, party_id,
                               debit, credit)
         select e, o, a, t, p, d, c
           from unnest($11::uuid[], $12::uuid[], $13::text[], $14::text[], $15::uuid[],
                       $16::numeric[], $17::numeric[]) with ordinality
                as l(e, o, a, t, p, d, c, n)
          where e in (select id from entry)
          order by n
         returning entry_id, organization_id, account_code, party_type, party_id, debit, credit),
     summed as (
         select p.organization_id, p.account_code, p.party_type, p.party_id, e.currency,
                sum(p.debit) as debit, sum(p.credit) as credit
           from posting p join entry e on e.id = p.entry_id
          group by 1, 2, 3, 4, 5),
     party as (
         insert into party_balances (organization_id, account_code, party_type, party_id,
                                     currency, debit_total, credit_total)
         select organization_id, account_code, party_type, party_id, currency, debit, credit
           from summed
          where party_type is not null and party_id is not null
          order by 1, 2, 3, 4, 5
         on conflict (organization_id, account_code, party_type, party_id, currency) do update
            set debit_total = party_balances.debit_total + excluded.debit_total,
                credit_total = party_balances.credit_total + excluded.credit_total,
                updated_at = now()),
     announced as ({})
     select id from entry",
        outbox::insert_rows(18, "u.d in (select id from entry)")
    )
});

/// Writes entries, their postings, the parties' balances and the announcements in one
/// statement, and the accounts' balances in a second ([`add_to_accounts`]), whatever the
/// number of entries. Returns the entries it posted.
///
/// An entry's id is its event's (or derived from the entry it corrects), so the journal's
/// primary key is the last word on what was posted: an entry posted before (its event's
/// gate row pruned by the retention, then the event read again by a replay) is left out,
/// with its postings, balances and announcement, and is not posted twice. The parties'
/// balances are summed from the postings the statement wrote, the accounts' from the
/// entries it returns as posted, so only those count.
pub async fn post<'a>(
    conn: &mut PgConnection,
    entries: &'a [Entry],
) -> Result<Vec<&'a Entry>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // The entries' `posted_at`, which their announcements carry too (in microseconds, as
    // the column keeps it).
    let now = Utc::now();
    let posted_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut e_id = Vec::with_capacity(entries.len());
    let mut e_org = Vec::with_capacity(entries.len());
    let mut e_source = Vec::with_capacity(entries.len());
    let mut e_rtype = Vec::with_capacity(entries.len());
    let mut e_rid = Vec::with_capacity(entries.len());
    let mut e_desc = Vec::with_capacity(entries.len());
    let mut e_cur = Vec::with_capacity(entries.len());
    let mut e_at = Vec::with_capacity(entries.len());
    let mut e_corr = Vec::with_capacity(entries.len());
    let mut p_entry = Vec::new();
    let mut p_org = Vec::new();
    let mut p_account = Vec::new();
    let mut p_ptype = Vec::new();
    let mut p_pid = Vec::new();
    let mut p_debit = Vec::new();
    let mut p_credit = Vec::new();
    let mut announcements = Vec::with_capacity(entries.len());
    for entry in entries {
        e_id.push(entry.id);
        e_org.push(entry.source.organization_id);
        e_source.push(entry.source.event_id);
        e_rtype.push(entry.reference_type);
        e_rid.push(entry.reference_id);
        e_desc.push(entry.description.as_str());
        e_cur.push(entry.currency.as_str());
        e_at.push(entry.source.occurred_at);
        e_corr.push(entry.source.correlation_id.as_str());
        for l in &entry.lines {
            p_entry.push(entry.id);
            p_org.push(entry.source.organization_id);
            p_account.push(l.account_code.as_str());
            p_ptype.push(l.party_type.as_deref());
            p_pid.push(l.party_id);
            p_debit.push(l.debit);
            p_credit.push(l.credit);
        }
        announcements.push(
            outbox::avro_row(&announcement(entry, posted_at))
                .map(|r| r.announcing(entry.id))
                .map_err(|e| sqlx::Error::Encode(e.into()))?,
        );
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(POST.as_str()))
        .bind(&e_id)
        .bind(&e_org)
        .bind(&e_source)
        .bind(&e_rtype)
        .bind(&e_rid)
        .bind(&e_desc)
        .bind(&e_cur)
        .bind(&e_at)
        .bind(&e_corr)
        .bind(posted_at)
        .bind(&p_entry)
        .bind(&p_org)
        .bind(&p_account)
        .bind(&p_ptype)
        .bind(&p_pid)
        .bind(&p_debit)
        .bind(&p_credit);
    let inserted: Vec<Uuid> = outbox::bind_all(query, &announcements)
        .try_map(|row: sqlx::postgres::PgRow| sqlx::Row::try_get(&row, 0))
        .fetch_all(&mut *conn)
        .await?;
    let fresh: Vec<&Entry> = if inserted.len() == entries.len() {
        entries.iter().collect()
    } else {
        let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        tracing::debug!(
            entries = entries.len() - inserted.len(),
            "entries posted before: not posted again"
        );
        entries
            .iter()
            .filter(|e| inserted.contains(&e.id))
            .collect()
    };
    add_to_accounts(conn, &fresh).await?;
    Ok(fresh)
}

/// Adds `entries`' lines to their accounts' balances: a statement of its own, after the
/// entries' (and their checks), because the organization's account rows are the only
/// ones concurrent batches share: their row locks are held for the shortest time (and
/// taken in key order).
async fn add_to_accounts(conn: &mut PgConnection, entries: &[&Entry]) -> Result<(), sqlx::Error> {
    let mut accounts: BTreeMap<(Uuid, &str, &str), (Decimal, Decimal)> = BTreeMap::new();
    for entry in entries {
        for l in &entry.lines {
            let a = accounts
                .entry((
                    entry.source.organization_id,
                    l.account_code.as_str(),
                    entry.currency.as_str(),
                ))
                .or_default();
            a.0 += l.debit;
            a.1 += l.credit;
        }
    }
    if accounts.is_empty() {
        return Ok(());
    }
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((organization, account, currency), (debit, credit)) in accounts {
        columns.0.push(organization);
        columns.1.push(account);
        columns.2.push(currency);
        columns.3.push(debit);
        columns.4.push(credit);
    }
    sqlx::query(
        "insert into account_balances (organization_id, account_code, currency, debit_total, credit_total)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::numeric[])
         on conflict (organization_id, account_code, currency) do update
            set debit_total = account_balances.debit_total + excluded.debit_total,
                credit_total = account_balances.credit_total + excluded.credit_total,
                updated_at = now()",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .bind(&columns.4)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The record announcing `entry`, posted at `posted_at` (the wire carries milliseconds).
pub fn announcement(entry: &Entry, posted_at: DateTime<Utc>) -> LedgerEntryPosted {
    LedgerEntryPosted {
        envelope: Envelope {
            event_id: announcement_id(entry.id),
            occurred_at: DateTime::from_timestamp_millis(posted_at.timestamp_millis())
                .unwrap_or(posted_at),
            organization_id: entry.source.organization_id,
            correlation_id: entry.source.correlation_id.clone(),
            causation_id: Some(entry.source.event_id.to_string()),
        },
        entry_id: entry.id,
        source_event_id: entry.source.event_id,
        reference_type: entry.reference_type.to_string(),
        reference_id: entry.reference_id,
        description: entry.description.clone(),
        currency: entry.currency.clone(),
        // Amounts as the postings hold them and the record's schema writes them: two places.
        lines: entry
            .lines
            .iter()
            .map(|l| PostingLine {
                debit: cents(l.debit),
                credit: cents(l.credit),
                ..l.clone()
            })
            .collect(),
    }
}

/// `amount` with two decimal places (an amount here never has more).
fn cents(mut amount: Decimal) -> Decimal {
    amount.rescale(2);
    amount
}

/// The id of an entry's announcement: the entry id's 48-bit timestamp (so outbox ids stay
/// time-ordered) followed by bytes of a name-based hash of the entry id, as a v8 UUID.
pub fn announcement_id(entry_id: Uuid) -> Uuid {
    let hashed = Uuid::new_v5(&Uuid::NAMESPACE_OID, entry_id.as_bytes());
    let mut bytes = *hashed.as_bytes();
    bytes[..6].copy_from_slice(&entry_id.as_bytes()[..6]);
    Uuid::new_v8(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::envelope;
    use dhanman_schemas::events::{PaymentReceived, SalaryPosted};

    #[test]
    fn every_entry_balances_and_follows_the_table() {
        let customer = Uuid::now_v7();
        let invoice = Event::InvoiceCreated(crate::fixtures::invoice(
            Uuid::now_v7(),
            customer,
            "2500.00",
        ));
        let payment = Event::PaymentReceived(PaymentReceived {
            envelope: envelope(),
            payment_id: Uuid::now_v7(),
            invoice_id: None,
            customer_id: customer,
            amount: "1000.10".parse().unwrap(),
            currency: "INR".into(),
            method: "manual".into(),
            reference: None,
        });
        let employee = Uuid::now_v7();
        let salary = Event::SalaryPosted(SalaryPosted {
            envelope: envelope(),
            salary_id: Uuid::now_v7(),
            employee_id: employee,
            period: "2026-11".into(),
            amount: "25000.00".parse().unwrap(),
            currency: "INR".into(),
        });
        for (event, debit, credit) in [
            (&invoice, AR, REVENUE),
            (&payment, BANK, AR),
            (&salary, SALARY_EXPENSE, SALARIES_PAYABLE),
        ] {
            let entry = entry_for(event).unwrap();
            assert!(posts_entry(event), "gated by its entry");
            let debits: Decimal = entry.lines.iter().map(|l| l.debit).sum();
            let credits: Decimal = entry.lines.iter().map(|l| l.credit).sum();
            assert_eq!(debits, credits);
            assert!(debits > Decimal::ZERO);
            let dr = entry
                .lines
                .iter()
                .find(|l| l.debit > Decimal::ZERO)
                .unwrap();
            let cr = entry
                .lines
                .iter()
                .find(|l| l.credit > Decimal::ZERO)
                .unwrap();
            assert_eq!(
                (dr.account_code.as_str(), cr.account_code.as_str()),
                (debit, credit)
            );
            // Only the receivable and the payable carry a party, as in the table.
            for l in &entry.lines {
                let party = match l.account_code.as_str() {
                    AR => Some(("customer", customer)),
                    SALARIES_PAYABLE => Some(("employee", employee)),
                    _ => None,
                };
                assert_eq!((l.party_type.as_deref(), l.party_id), party.unzip());
            }
            // Same event, same entry id: the basis of idempotent posting.
            assert_eq!(entry_for(event).unwrap().id, entry.id);
            let announced = announcement_id(entry.id);
            assert_eq!(announced, announcement_id(entry.id));
            assert_ne!(announced, entry.id);
            assert_eq!(announced.as_bytes()[..6], entry.id.as_bytes()[..6]);
        }
        // An event that posts nothing is not gated by an entry.
        let user = Event::UserCreated(dhanman_schemas::events::UserCreated {
            envelope: envelope(),
            user_id: Uuid::now_v7(),
            email: "asha@example.org".into(),
            name: "Asha".into(),
            role: "admin".into(),
        });
        assert!(entry_for(&user).is_none() && !posts_entry(&user));
    }

    #[test]
    fn a_bill_against_an_order_releases_what_the_approval_reserved() {
        let vendor_id = Uuid::now_v7();
        let po_id = Uuid::now_v7();
        let amount: Decimal = "60000.00".parse().unwrap();
        let approved = Event::POApproved(dhanman_schemas::events::POApproved {
            envelope: envelope(),
            po_id,
            vendor_id,
            requester_id: Uuid::now_v7(),
            amount,
            currency: "INR".into(),
            approved_by: vec![Uuid::now_v7()],
        });
        let bill = |po_id| {
            Event::BillCreated(dhanman_schemas::events::BillCreated {
                envelope: envelope(),
                bill_id: Uuid::now_v7(),
                vendor_id,
                po_id,
                amount: "45000.50".parse().unwrap(),
                currency: "INR".into(),
                description: "Lift repair".into(),
                due_date: "2026-12-31".parse().unwrap(),
            })
        };
        // Net movement per account over the approval and the bill.
        let net = |events: &[&Event]| {
            let mut net: BTreeMap<String, Decimal> = BTreeMap::new();
            for e in events {
                let entry = entry_for(e).unwrap();
                assert!(posts_entry(e), "gated by its entry");
                let debits: Decimal = entry.lines.iter().map(|l| l.debit).sum();
                let credits: Decimal = entry.lines.iter().map(|l| l.credit).sum();
                assert_eq!(debits, credits, "{}", entry.description);
                for l in entry.lines {
                    *net.entry(l.account_code).or_default() += l.debit - l.credit;
                }
            }
            net
        };
        let with_po = net(&[&approved, &bill(Some(po_id))]);
        let remaining: Decimal = "14999.50".parse().unwrap();
        assert_eq!(with_po[COMMITMENTS], remaining);
        assert_eq!(with_po[RESERVED_BUDGET], -remaining);
        assert_eq!(with_po[EXPENSES], "45000.50".parse::<Decimal>().unwrap());
        assert_eq!(with_po[PAYABLE], "-45000.50".parse::<Decimal>().unwrap());
        // Without an order, nothing is released.
        let without = net(&[&bill(None)]);
        assert!(!without.contains_key(RESERVED_BUDGET) && !without.contains_key(COMMITMENTS));
        let payable = entry_for(&bill(None)).unwrap();
        let party = payable
            .lines
            .iter()
            .find(|l| l.account_code == PAYABLE)
            .unwrap();
        assert_eq!(
            (party.party_type.as_deref(), party.party_id),
            (Some("vendor"), Some(vendor_id))
        );
    }
}
