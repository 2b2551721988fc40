//! Corrections by replay: each event's entry under today's rules ([`super::entry_under`])
//! against the entry in force for it (its original, or the last correction of it). Where
//! they differ, the entry in force is reversed by an entry of its own and the entry
//! today's rules make is posted beside it, as an accountant corrects: nothing posted is
//! edited or deleted.
//!
//! | entry | `reference_type` | `reference_id` | id |
//! |---|---|---|---|
//! | the reversal | `reversal` | the entry reversed | v5 of `reversal/<entry reversed>` |
//! | the corrected entry | `correction` | the entry it replaces | v5 of `correction/<entry replaced>` |
//!
//! Both keep the source event of the entry they stand for and are dated when posted. Their
//! ids follow from the entry they act on, and a corrected entry is the entry in force
//! afterwards, so a second run finds nothing to correct (and a run racing another one
//! fails on the primary key instead of posting twice; [`lock`] makes them queue instead).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use dhanman_schemas::Event;
use dhanman_schemas::events::{Envelope, PostingLine};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Accounts, Entry, entry_under, post};

pub const REVERSAL: &str = "reversal";
pub const CORRECTION: &str = "correction";

/// (organization, account, currency)
pub type AccountKey = (Uuid, String, String);
/// (organization, party type, party id, account, currency)
pub type PartyKey = (Uuid, String, Uuid, String, String);

/// What correcting a range did, or would do.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Events whose entry in force is what today's rules make.
    pub unchanged: usize,
    /// Events that post an entry but have none yet (`dhanman replay --execute` posts them).
    pub not_posted: usize,
    /// Entries reversed and replaced.
    pub corrected: usize,
    /// Net change (debits less credits) per account.
    pub by_account: BTreeMap<AccountKey, Decimal>,
    /// Net change (debits less credits) per party's account.
    pub by_party: BTreeMap<PartyKey, Decimal>,
}

impl Outcome {
    fn count(&mut self, sign: Decimal, org: Uuid, currency: &str, lines: &[PostingLine]) {
        for l in lines {
            let net = sign * (l.debit - l.credit);
            *self
                .by_account
                .entry((org, l.account_code.clone(), currency.to_string()))
                .or_default() += net;
            if let (Some(t), Some(id)) = (&l.party_type, l.party_id) {
                *self
                    .by_party
                    .entry((
                        org,
                        t.clone(),
                        id,
                        l.account_code.clone(),
                        currency.to_string(),
                    ))
                    .or_default() += net;
            }
        }
    }

    /// Drops the accounts and parties whose changes cancel out.
    pub fn settle(&mut self) {
        self.by_account.retain(|_, v| !v.is_zero());
        self.by_party.retain(|_, v| !v.is_zero());
    }
}

/// The entry in force for one event, as posted.
#[derive(Debug, sqlx::FromRow)]
struct InForce {
    id: Uuid,
    source_event_id: Uuid,
    organization_id: Uuid,
    description: String,
    currency: String,
    correlation_id: Option<String>,
    account_codes: Vec<String>,
    party_types: Vec<Option<String>>,
    party_ids: Vec<Option<Uuid>>,
    debits: Vec<Decimal>,
    credits: Vec<Decimal>,
}

impl InForce {
    fn lines(&self) -> Vec<PostingLine> {
        (0..self.account_codes.len())
            .map(|i| PostingLine {
                account_code: self.account_codes[i].clone(),
                party_type: self.party_types[i].clone(),
                party_id: self.party_ids[i],
                debit: self.debits[i],
                credit: self.credits[i],
            })
            .collect()
    }
}

/// Lines compared as a set: order is how they were written, not what they mean.
fn normalized(currency: &str, lines: &[PostingLine]) -> (String, Vec<PostingLine>) {
    let mut lines = lines.to_vec();
    for l in &mut lines {
        l.debit = l.debit.normalize();
        l.credit = l.credit.normalize();
    }
    lines.sort_by(|a, b| {
        (
            &a.account_code,
            &a.party_type,
            a.party_id,
            a.debit,
            a.credit,
        )
            .cmp(&(
                &b.account_code,
                &b.party_type,
                b.party_id,
                b.debit,
                b.credit,
            ))
    });
    (currency.trim().to_string(), lines)
}

/// Serializes correcting runs: taken first in each transaction that posts corrections.
pub async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtext('dhanman.ledger.correct'))")
        .execute(conn)
        .await?;
    Ok(())
}

/// Compares `events` with the entries in force and, with `execute`, posts the reversals
/// and corrected entries in the caller's transaction. `outcome` adds up what was (or
/// would be) done.
pub async fn correct(
    conn: &mut PgConnection,
    accounts: &Accounts,
    events: &[Event],
    execute: bool,
    outcome: &mut Outcome,
) -> Result<(), sqlx::Error> {
    let wanted: Vec<Entry> = events
        .iter()
        .filter_map(|e| entry_under(accounts, e))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = wanted.iter().map(|e| e.source.event_id).collect();
    // Per event: its original (id = the event's) or a correction of it, never reversed.
    let in_force: Vec<InForce> = sqlx::query_as(
        "select j.id, j.source_event_id, j.organization_id, j.description,
                j.currency::text as currency, j.correlation_id,
                array_agg(p.account_code order by p.id) as account_codes,
                array_agg(p.party_type order by p.id) as party_types,
                array_agg(p.party_id order by p.id) as party_ids,
                array_agg(p.debit order by p.id) as debits,
                array_agg(p.credit order by p.id) as credits
           from journal_entries j join postings p on p.entry_id = j.id
          where (j.id = any($1) or (j.source_event_id = any($1) and j.id <> j.source_event_id))
            and j.reference_type <> $2
            and not exists (select 1 from journal_entries r
                             where r.organization_id = j.organization_id
                               and r.reference_id = j.id and r.reference_type = $2)
          group by j.id",
    )
    .bind(&ids)
    .bind(REVERSAL)
    .fetch_all(&mut *conn)
    .await?;
    let in_force: HashMap<Uuid, InForce> = in_force
        .into_iter()
        .map(|e| (e.source_event_id, e))
        .collect();

    let now =
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
    let mut to_post = Vec::new();
    for want in wanted {
        let Some(posted) = in_force.get(&want.source.event_id) else {
            outcome.not_posted += 1;
            continue;
        };
        let old_lines = posted.lines();
        if normalized(&posted.currency, &old_lines) == normalized(&want.currency, &want.lines) {
            outcome.unchanged += 1;
            continue;
        }
        outcome.corrected += 1;
        let org = posted.organization_id;
        outcome.count(Decimal::NEGATIVE_ONE, org, &posted.currency, &old_lines);
        outcome.count(Decimal::ONE, org, &want.currency, &want.lines);
        if !execute {
            continue;
        }
        let source = Envelope {
            event_id: posted.source_event_id,
            occurred_at: now,
            organization_id: org,
            correlation_id: posted.correlation_id.clone().unwrap_or_default(),
            causation_id: None,
        };
        let reversal_id = derived_id(REVERSAL, posted.id);
        let correction_id = derived_id(CORRECTION, posted.id);
        to_post.push(Entry {
            id: reversal_id,
            source: source.clone(),
            reference_type: REVERSAL,
            reference_id: posted.id,
            description: format!("Reversal of entry {}: {}", posted.id, posted.description),
            currency: posted.currency.trim().to_string(),
            lines: old_lines
                .iter()
                .map(|l| PostingLine {
                    debit: l.credit,
                    credit: l.debit,
                    ..l.clone()
                })
                .collect(),
        });
        to_post.push(Entry {
            id: correction_id,
            source,
            reference_type: CORRECTION,
            reference_id: posted.id,
            description: format!(
                "{} (corrected: replaces entry {}, reversed by {reversal_id})",
                want.description, posted.id
            ),
            currency: want.currency,
            lines: want.lines,
        });
    }
    if !to_post.is_empty() {
        post(conn, &to_post).await?;
    }
    Ok(())
}

/// The id of the reversal or the corrected entry of `entry`: the same on every run.
pub fn derived_id(kind: &str, entry: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("dhanman-ledger/{kind}/{entry}").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(account: &str, debit: &str, credit: &str) -> PostingLine {
        PostingLine {
            account_code: account.into(),
            party_type: None,
            party_id: None,
            debit: debit.parse().unwrap(),
            credit: credit.parse().unwrap(),
        }
    }

    #[test]
    fn lines_compare_as_a_set_of_amounts() {
        let a = [line("1200", "10.00", "0"), line("4000", "0", "10.00")];
        let b = [line("4000", "0.00", "10"), line("1200", "10", "0.00")];
        assert_eq!(normalized("INR", &a), normalized("INR ", &b));
        let moved = [line("1200", "10", "0"), line("4100", "0", "10")];
        assert_ne!(normalized("INR", &a), normalized("INR", &moved));
        assert_ne!(normalized("INR", &a), normalized("USD", &a));
    }

    #[test]
    fn net_changes_add_up_per_account_and_cancel() {
        let org = Uuid::now_v7();
        let mut o = Outcome::default();
        let old = [line("1200", "10", "0"), line("4000", "0", "10")];
        let new = [line("1200", "10", "0"), line("4100", "0", "10")];
        o.count(Decimal::NEGATIVE_ONE, org, "INR", &old);
        o.count(Decimal::ONE, org, "INR", &new);
        o.settle();
        let key = |a: &str| (org, a.to_string(), "INR".to_string());
        assert_eq!(
            o.by_account,
            BTreeMap::from([
                (key("4000"), Decimal::new(10, 0)),
                (key("4100"), Decimal::new(-10, 0)),
            ])
        );
        assert_ne!(derived_id(REVERSAL, org), derived_id(CORRECTION, org));
        assert_eq!(derived_id(REVERSAL, org), derived_id(REVERSAL, org));
    }
}
