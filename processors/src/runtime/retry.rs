//! Transient or poison, decided in one place, and how a batch is retried: a transient
//! failure (database or registry down) retries the whole batch with backoff and never
//! advances its offsets; a poison one dead-letters the record that fails alone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dhanman_connectors::retry::Backoff;

use super::batch::{Decoded, NextOffsets};
use super::metric;
use super::transaction::store_offsets;
use super::{BatchReport, Incoming, Processor, Runtime};
use crate::Error;

/// The pause after a batch's first failed attempt.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Transient (retry the batch, never advance) or poison (dead-letter the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Poison,
}

/// Why a processor could not apply events: the one split every processor's failures go
/// through.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The same transaction may succeed later (the database is down, a serialization
    /// failure): the batch is retried and its offsets do not move.
    #[error("{0}")]
    Transient(String),
    /// The events cannot be applied as they are, now or later: the record that fails
    /// alone is dead-lettered and the partition moves on.
    #[error("{0}")]
    Poison(String),
}

impl ApplyError {
    pub fn class(&self) -> Class {
        match self {
            ApplyError::Transient(_) => Class::Transient,
            ApplyError::Poison(_) => Class::Poison,
        }
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        match classify_db(&e) {
            Class::Transient => ApplyError::Transient(format!("database: {e}")),
            Class::Poison => ApplyError::Poison(format!("database: {e}")),
        }
    }
}

/// An outbox write refused for what it holds (not the database's state) is poison; a
/// database failure is classed as the database's.
impl From<dhanman_plumbing::Error> for ApplyError {
    fn from(e: dhanman_plumbing::Error) -> Self {
        match e {
            dhanman_plumbing::Error::Database(db) => db.into(),
            other => ApplyError::Poison(other.to_string()),
        }
    }
}

/// How the runtime takes a database failure: retried when it is transient
/// ([`dhanman_plumbing::postgres::is_transient`], as the API answers 503) or when the
/// statement itself cannot run ([`is_defect`]), else poison.
pub fn classify_db(e: &sqlx::Error) -> Class {
    if dhanman_plumbing::postgres::is_transient(e) || is_defect(e) {
        Class::Transient
    } else {
        Class::Poison
    }
}

/// Whether `e` says the statement or the schema is wrong, not the records: SQLSTATE class
/// 42 (a relation, column or function missing, a privilege revoked, a syntax error) or 0A
/// (a feature not supported). Every record would fail the same way, so none is
/// dead-lettered for it: the batch is retried (and logged) until the schema or the build is
/// put right, its offsets unmoved.
pub fn is_defect(e: &sqlx::Error) -> bool {
    dhanman_plumbing::postgres::in_classes(e, &["42", "0A"])
}

impl<P: Processor> Runtime<P> {
    /// How a failed batch is retried: from 100 ms, doubling up to `max_backoff`, each pause
    /// plus up to a quarter of itself at random, so members failing together spread out.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff::new(FIRST_RETRY, self.config.max_backoff).with_jitter(0.25)
    }

    /// Processes a batch until it commits, backing off on transient failures; `offsets` as
    /// for [`Runtime::process`].
    pub(super) async fn process_with_retry(
        &self,
        batch: &[Incoming],
        mut decoded: Option<Vec<Decoded>>,
        offsets: bool,
    ) -> BatchReport {
        let attempt = AtomicU32::new(0);
        let started = Instant::now();
        let processor = self.processor.name().to_string();
        let report = self
            .backoff()
            .retry_forever(
                || {
                    let this_attempt = attempt.fetch_add(1, Ordering::Relaxed) + 1;
                    self.process(batch, decoded.take(), this_attempt, offsets)
                },
                |e, pause| {
                    metrics::counter!(metric::FAILURES, "processor" => processor.clone(), "class" => "transient")
                        .increment(1);
                    metrics::counter!(metric::RETRIES, "processor" => processor.clone())
                        .increment(1);
                    tracing::warn!(error = %e, attempt = attempt.load(Ordering::Relaxed), retry_in = ?pause, records = batch.len(), "transient failure, batch will be retried");
                },
            )
            .await;
        metrics::histogram!(metric::BATCH_DURATION, "processor" => processor)
            .record(started.elapsed().as_secs_f64());
        report
    }

    /// Stores the next offsets of a batch whose lanes have all committed, in a statement of
    /// its own, retrying transient failures. Until it is stored, a crash re-reads the batch:
    /// its events are skipped as applied by their gates, its dead letters kept by their ids.
    pub(super) async fn store_split_offsets(&self, next: &NextOffsets) {
        if !self.store_group_offsets {
            return;
        }
        let group = self.group_id();
        self.backoff()
            .retry_forever(
                || async {
                    let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
                    store_offsets(&mut conn, &group, next).await
                },
                |e: &Error, pause| {
                    tracing::warn!(error = %e, retry_in = ?pause, "storing a batch's offsets failed, will retry");
                },
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_database_failures_can_be_transient() {
        let down = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert_eq!(ApplyError::from(down).class(), Class::Transient);
        // What an outbox write refuses for its content never succeeds on a retry.
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        let encode = dhanman_plumbing::Error::Encode(encode);
        assert_eq!(ApplyError::from(encode).class(), Class::Poison);
        let closed = dhanman_plumbing::Error::Database(sqlx::Error::PoolClosed);
        assert_eq!(ApplyError::from(closed).class(), Class::Transient);
    }

    #[test]
    fn connection_failures_are_transient_and_constraint_failures_poison() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert_eq!(classify_db(&io), Class::Transient);
        assert_eq!(classify_db(&sqlx::Error::PoolTimedOut), Class::Transient);
        assert_eq!(classify_db(&sqlx::Error::RowNotFound), Class::Poison);
    }
}
