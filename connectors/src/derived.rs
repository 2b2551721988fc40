//! Records the relay builds at publish time from the rows an outbox row names
//! (`outbox.derived_from`) instead of from a stored payload. Only immutable sources qualify,
//! so what is published equals what the writing transaction saw.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use dhanman_schemas::events::{Envelope, LedgerEntryPosted, PostingLine, Record};
use rust_decimal::Decimal;
use serde_json::Value as Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// An outbox row whose record is derived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Derived<'a> {
    pub event_id: Uuid,
    pub record_name: &'a str,
    pub source: Uuid,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: Uuid,
    organization_id: Uuid,
    source_event_id: Uuid,
    reference_type: String,
    reference_id: Uuid,
    description: String,
    currency: String,
    correlation_id: Option<String>,
    posted_at: DateTime<Utc>,
    account_codes: Vec<String>,
    party_types: Vec<Option<String>>,
    party_ids: Vec<Option<Uuid>>,
    debits: Vec<Decimal>,
    credits: Vec<Decimal>,
}

/// The JSON form of each derived record, by outbox event id.
pub(crate) async fn build(pool: &PgPool, rows: &[Derived<'_>]) -> Result<HashMap<Uuid, Json>> {
    let mut out = HashMap::with_capacity(rows.len());
    let entries: Vec<&Derived> = rows
        .iter()
        .filter(|r| r.record_name == LedgerEntryPosted::NAME)
        .collect();
    if let Some(other) = rows
        .iter()
        .find(|r| r.record_name != LedgerEntryPosted::NAME)
    {
        return Err(Error::Outbox(format!(
            "row {} derives {}, which the relay cannot build",
            other.event_id, other.record_name
        )));
    }
    if entries.is_empty() {
        return Ok(out);
    }
    let ids: Vec<Uuid> = entries.iter().map(|r| r.source).collect();
    // Lines in insertion order, which is the order the ledger wrote them in.
    let found: Vec<EntryRow> = sqlx::query_as(
        "select j.id, j.organization_id, j.source_event_id, j.reference_type, j.reference_id,
                j.description, j.currency, j.correlation_id, j.posted_at,
                array_agg(p.account_code order by p.id) as account_codes,
                array_agg(p.party_type order by p.id) as party_types,
                array_agg(p.party_id order by p.id) as party_ids,
                array_agg(p.debit order by p.id) as debits,
                array_agg(p.credit order by p.id) as credits
           from journal_entries j join postings p on p.entry_id = j.id
          where j.id = any($1)
          group by j.id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let by_id: HashMap<Uuid, EntryRow> = found.into_iter().map(|e| (e.id, e)).collect();
    for row in entries {
        let entry = by_id.get(&row.source).ok_or_else(|| {
            Error::Outbox(format!(
                "row {} announces journal entry {}, which does not exist",
                row.event_id, row.source
            ))
        })?;
        let lines = (0..entry.account_codes.len())
            .map(|i| PostingLine {
                account_code: entry.account_codes[i].clone(),
                party_type: entry.party_types[i].clone(),
                party_id: entry.party_ids[i],
                debit: entry.debits[i],
                credit: entry.credits[i],
            })
            .collect();
        let record = LedgerEntryPosted {
            envelope: Envelope {
                event_id: row.event_id,
                // The wire carries milliseconds.
                occurred_at: DateTime::from_timestamp_millis(entry.posted_at.timestamp_millis())
                    .unwrap_or(entry.posted_at),
                organization_id: entry.organization_id,
                correlation_id: entry.correlation_id.clone().unwrap_or_default(),
                causation_id: Some(entry.source_event_id.to_string()),
            },
            entry_id: entry.id,
            source_event_id: entry.source_event_id,
            reference_type: entry.reference_type.clone(),
            reference_id: entry.reference_id,
            description: entry.description.clone(),
            currency: entry.currency.clone(),
            lines,
        };
        let json = serde_json::to_value(&record).map_err(|e| Error::Outbox(e.to_string()))?;
        out.insert(row.event_id, json);
    }
    Ok(out)
}
