//! Single invoices written in groups: the API's `POST /v1/invoices` commands that arrive
//! while others are being written are written together, by one statement
//! ([`write_group`]), each with its own idempotency key. The statement writes what writing
//! each alone ([`sales::write_prepared`]) would: the invoice if its customer is in its
//! organization and active, its outbox rows (the first email addressed to the customer)
//! and its key with its response.
//!
//! An invoice the statement leaves out (its customer refused, its key used before keys had
//! users) is then written alone, which names the refusal. A statement that fails on the
//! database (a number or a key taken, by the group itself or by a request committed
//! meanwhile) writes nothing, and every invoice of the group is then written alone: each
//! gets the answer it would have got alone, and none is written twice.

use std::collections::HashSet;

use dhanman_plumbing::outbox;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::idempotency::{self, Key, Recording};
use crate::sales::{PreparedInvoice, queue_rows_sql, write_prepared};
use crate::{Error, Result};

/// One single-invoice command of a group: its organization, its invoice and its
/// `Idempotency-Key`, if it has one (its response is the invoice's status 201).
pub struct Grouped {
    pub organization_id: Uuid,
    pub invoice: PreparedInvoice,
    pub key: Option<Key>,
}

impl Grouped {
    fn recording(&self) -> Option<Recording<'_>> {
        self.key.as_ref().map(|key| Recording {
            key,
            status: CREATED,
        })
    }
}

/// The status a created invoice is answered (and its key stored) with.
const CREATED: u16 = 201;

/// Invoices the writers took, each command once (a counter).
pub const INVOICES: &str = "dhanman_invoice_writer_invoices_total";

/// Statements the writers ran to write them: one a group, one more for each invoice then
/// written alone (a counter). `INVOICES / STATEMENTS` is the invoices a statement wrote.
pub const STATEMENTS: &str = "dhanman_invoice_writer_statements_total";

/// Writes `group`: one result per command, in order, each what writing it alone would
/// have answered.
pub async fn write_group(conn: &mut PgConnection, group: &[Grouped]) -> Vec<Result<()>> {
    metrics::counter!(INVOICES).increment(group.len() as u64);
    metrics::counter!(STATEMENTS).increment(1);
    if group.len() == 1 {
        return vec![write_alone_once(conn, &group[0]).await];
    }
    let written = match insert_group(conn, group).await {
        Ok(written) => written,
        Err(sqlx::Error::Database(db)) => {
            tracing::debug!(error = %db, size = group.len(), "invoice group written one by one");
            let mut results = Vec::with_capacity(group.len());
            for grouped in group {
                results.push(write_alone_again(conn, grouped).await);
            }
            return results;
        }
        // The connection failed: whether the statement committed is not known, and each
        // command is answered the error (a retry with its key gets the first response).
        Err(e) => return group.iter().map(|_| Err(failed(&e))).collect(),
    };
    let mut results = Vec::with_capacity(group.len());
    for grouped in group {
        if written.contains(&grouped.invoice.event.invoice_id) {
            grouped.invoice.created.log();
            results.push(Ok(()));
        } else {
            results.push(write_alone_again(conn, grouped).await);
        }
    }
    results
}

/// The `application_name` of the sessions that write groups (`pg_stat_activity` shows
/// them apart from the API's pool).
pub const APPLICATION_NAME: &str = "dhanman invoice writer";

/// The settings of a session that writes groups: no table is read whole where an index
/// can find the rows (the statement's look-ups are by primary key), whatever the tables'
/// sizes were when its plan was made.
pub fn session(options: PgConnectOptions) -> PgConnectOptions {
    options
        .options([("enable_seqscan", "off")])
        .application_name(APPLICATION_NAME)
}

/// An invoice its group's statement did not write, written alone: a statement more.
async fn write_alone_again(conn: &mut PgConnection, grouped: &Grouped) -> Result<()> {
    metrics::counter!(STATEMENTS).increment(1);
    write_alone_once(conn, grouped).await
}

async fn write_alone_once(conn: &mut PgConnection, grouped: &Grouped) -> Result<()> {
    write_prepared(
        conn,
        grouped.organization_id,
        &grouped.invoice,
        grouped.recording(),
    )
    .await
}

/// One command's share of an error that failed its whole group (its connection, or the
/// pool that had none to give).
pub fn failed(e: &sqlx::Error) -> Error {
    Error::Database(sqlx::Error::Protocol(format!(
        "writing an invoice group: {e}"
    )))
}

/// The group's invoices, outbox rows and keys in one statement; the ids of the invoices
/// written. Each invoice's customer and key are looked up one by one (a lateral look-up
/// and a scalar one, never a join the planner may turn into a read of a whole table), by
/// key in a session of [`session`]: the plan Postgres keeps for the statement stays right
/// however large the tables grow after it was made.
async fn insert_group(
    conn: &mut PgConnection,
    group: &[Grouped],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let events = || group.iter().map(|g| &g.invoice.event);
    let keys = || group.iter().map(|g| g.key.as_ref());
    let responses = group
        .iter()
        .map(|g| match &g.key {
            Some(_) => serde_json::to_string(&g.invoice.created).map(Some),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let rows: Vec<(&outbox::Row, bool, Uuid)> = group
        .iter()
        .flat_map(|g| {
            let invoice_id = g.invoice.event.invoice_id;
            g.invoice
                .rows
                .iter()
                .map(move |(r, to)| (r, *to, invoice_id))
        })
        .collect();
    let query = sqlx::query(concat!(
        "with item as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::numeric[],
                                  $6::text[], $7::date[], $8::date[], $9::text[], $10::text[],
                                  $11::uuid[], $12::text[], $13::bytea[], $14::text[])
                 with ordinality as i(id, org, customer, number, amount, currency, issued, due,
                                      descr, period, user_id, key, hash, response, n)
         ), checked as (
             select i.*, c.email
               from item i
               cross join lateral (select c.email from customers c
                                    where c.id = i.customer and c.organization_id = i.org
                                      and c.active
                                    limit 1) c
              where i.key is null
                 or (select 1 from idempotency_keys k
                      where k.organization_id = i.org and k.user_id = $15
                        and k.idempotency_key = i.key
                      limit 1) is null
         ), invoice as (
             insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                                   currency, issue_date, due_date, description, period)
             select id, org, customer, number, amount, currency, issued, due, descr, period
               from checked
              order by n
             returning id
         ), queued as (",
        queue_rows_sql!("i.email"),
        "
               from unnest($17::uuid[], $18::text[], $19::text[], $20::text[], $21::int[],
                           $22::json[], $23::json[], $24::bool[], $25::uuid[]) with ordinality
                    as u(id, t, k, r, v, p, h, to_customer, invoice, n)
               join checked i on i.id = u.invoice
               join invoice on invoice.id = u.invoice
              order by u.n
         ), keyed as (
             insert into idempotency_keys (organization_id, user_id, idempotency_key,
                                           request_hash, response_status, response_body)
             select i.org, i.user_id, i.key, i.hash, $16, i.response::json
               from checked i join invoice on invoice.id = i.id
              where i.key is not null
         )
         select id from invoice"
    ))
    .bind(events().map(|e| e.invoice_id).collect::<Vec<_>>())
    .bind(group.iter().map(|g| g.organization_id).collect::<Vec<_>>())
    .bind(events().map(|e| e.customer_id).collect::<Vec<_>>())
    .bind(
        events()
            .map(|e| e.invoice_number.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| e.amount).collect::<Vec<_>>())
    .bind(events().map(|e| e.currency.as_str()).collect::<Vec<_>>())
    .bind(events().map(|e| e.issue_date).collect::<Vec<_>>())
    .bind(events().map(|e| e.due_date).collect::<Vec<_>>())
    .bind(
        events()
            .map(|e| e.description.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| e.period.as_deref()).collect::<Vec<_>>())
    .bind(keys().map(|k| k.map(|k| k.user_id)).collect::<Vec<_>>())
    .bind(
        keys()
            .map(|k| k.map(|k| k.key.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        keys()
            .map(|k| k.map(|k| k.request_hash.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(responses)
    .bind(idempotency::LEGACY_USER)
    .bind(i32::from(CREATED));
    let written = outbox::bind_rows(query, rows.iter().map(|(r, ..)| *r))
        .bind(rows.iter().map(|(_, to, _)| *to).collect::<Vec<_>>())
        .bind(rows.iter().map(|(.., id)| *id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    written.iter().map(|row| row.try_get(0)).collect()
}
