//! The journal entries of one reference (an invoice, a payment, ...) with their lines,
//! oldest first, a page of entries at a time.

use chrono::{DateTime, Utc};
use dhanman_schemas::events::PostingLine;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::money;

/// A page's sort key: the entry's time, then its id.
pub type EntryKey = (DateTime<Utc>, Uuid);

/// A journal entry with its lines, in posting order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub entry_id: Uuid,
    pub source_event_id: Uuid,
    pub reference_type: String,
    pub reference_id: Uuid,
    pub description: String,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
    pub lines: Vec<PostingLine>,
}

impl Entry {
    pub fn key(&self) -> EntryKey {
        (self.occurred_at, self.entry_id)
    }
}

/// The organization's entries of `reference_id`, the `fetch` first after `after`. A
/// salary's entries (what an employee is paid) only `with_salaries`.
pub async fn entries(
    pool: &PgPool,
    organization_id: Uuid,
    reference_id: Uuid,
    with_salaries: bool,
    after: Option<EntryKey>,
    fetch: i64,
) -> sqlx::Result<Vec<Entry>> {
    let (after_at, after_id) = after.unzip();
    let rows = sqlx::query!(
        r#"with page as (
               select * from journal_entries
                where organization_id = $1 and reference_id = $2
                  and ($3::timestamptz is null or (occurred_at, id) > ($3, $4))
                  and (reference_type <> 'salary' or $6)
                order by occurred_at, id
                limit $5
           )
           select e.id, e.source_event_id, e.reference_type, e.description,
                  e.currency::text as "currency!", e.occurred_at, p.account_code, p.party_type,
                  p.party_id, p.debit, p.credit
             from page e join postings p on p.entry_id = e.id
            order by e.occurred_at, e.id, p.id"#,
        organization_id,
        reference_id,
        after_at,
        after_id,
        fetch,
        with_salaries
    )
    .fetch_all(pool)
    .await?;
    let mut entries: Vec<Entry> = Vec::new();
    for r in rows {
        let line = PostingLine {
            account_code: r.account_code,
            party_type: r.party_type,
            party_id: r.party_id,
            debit: money(r.debit),
            credit: money(r.credit),
        };
        match entries.last_mut() {
            Some(last) if last.entry_id == r.id => last.lines.push(line),
            _ => entries.push(Entry {
                entry_id: r.id,
                source_event_id: r.source_event_id,
                reference_type: r.reference_type,
                reference_id,
                description: r.description,
                currency: r.currency,
                occurred_at: r.occurred_at,
                lines: vec![line],
            }),
        }
    }
    Ok(entries)
}
