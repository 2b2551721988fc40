//! The writers of `POST /v1/invoices`: a few tasks that take the single invoices waiting
//! to be written, all of them up to [`MAX_GROUP`], and write them with one statement
//! ([`invoice_group::write_group`]). An invoice that arrives while every writer is busy
//! waits for the next free one, and is written with those that arrived meanwhile; one that
//! arrives to an idle writer is written at once, alone. Many commands at once thus cost
//! Postgres one statement and one commit per group instead of one each, and no command
//! waits on a timer.
//!
//! Each command is answered what writing it alone would have answered (see
//! [`invoice_group`]). A command whose client goes away while it waits is still written,
//! as one whose statement was already sent would be; its key, if it had one, answers its
//! retry.

use std::sync::Arc;

use dhanman_producers::idempotency::Key;
use dhanman_producers::invoice_group::{self, Grouped};
use dhanman_producers::sales::{CreatedInvoice, PreparedInvoice};
use dhanman_producers::{Error, Result};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// Invoices one statement writes at most.
pub const MAX_GROUP: usize = 64;

/// Tasks writing groups at once, on connections of their own
/// ([`invoice_group::session`]), unless configured (`DHANMAN_INVOICE_WRITERS`): the best of
/// one to eight on 2 cores.
pub const DEFAULT_WRITERS: usize = 2;

/// Invoices waiting for a writer at most; a command beyond them waits to be queued.
const QUEUE: usize = 1024;

struct Job {
    grouped: Grouped,
    answer: oneshot::Sender<Result<CreatedInvoice>>,
}

/// Where the API's handlers hand their single invoices (cheap to clone). The writers stop
/// when the last handle is dropped.
#[derive(Clone)]
pub struct InvoiceWriter {
    jobs: mpsc::Sender<Job>,
}

impl InvoiceWriter {
    /// Starts `writers` writers (at least one) on the database of `pool`, in sessions of
    /// their own (opened when first needed, waited for as long as `pool`'s; on the current
    /// Tokio runtime).
    pub fn start(pool: &PgPool, writers: usize) -> Self {
        let writers = writers.max(1);
        let options = invoice_group::session((*pool.connect_options()).clone());
        let size = u32::try_from(writers).unwrap_or(u32::MAX);
        let pool = dhanman_plumbing::postgres::pool_beside(pool, size, options);
        let (jobs, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..writers {
            tokio::spawn(write_groups(pool.clone(), waiting.clone()));
        }
        InvoiceWriter { jobs }
    }

    /// Writes `invoice` of `organization_id` with `key`, in a group of those waiting with
    /// it; its answer once the group's statement has ended.
    pub async fn write(
        &self,
        organization_id: Uuid,
        invoice: PreparedInvoice,
        key: Option<Key>,
    ) -> Result<CreatedInvoice> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            grouped: Grouped {
                organization_id,
                invoice,
                key,
            },
            answer,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> Error {
    Error::Database(sqlx::Error::WorkerCrashed)
}

/// One writer: waits for an invoice, takes every other one waiting (up to [`MAX_GROUP`])
/// and writes them.
async fn write_groups(pool: PgPool, waiting: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut group: Vec<Grouped> = Vec::with_capacity(MAX_GROUP);
    let mut answers = Vec::with_capacity(MAX_GROUP);
    loop {
        {
            let mut waiting = waiting.lock().await;
            let Some(mut job) = waiting.recv().await else {
                return;
            };
            loop {
                group.push(job.grouped);
                answers.push(job.answer);
                if group.len() == MAX_GROUP {
                    break;
                }
                match waiting.try_recv() {
                    Ok(next) => job = next,
                    Err(_) => break,
                }
            }
        }
        let results = match pool.acquire().await {
            Ok(mut conn) => invoice_group::write_group(&mut conn, &group).await,
            Err(e) => group
                .iter()
                .map(|_| Err(invoice_group::failed(&e)))
                .collect(),
        };
        for ((grouped, answer), result) in group.drain(..).zip(answers.drain(..)).zip(results) {
            let _ = answer.send(result.map(|()| grouped.invoice.created));
        }
    }
}
