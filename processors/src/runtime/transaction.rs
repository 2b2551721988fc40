//! One batch, one Postgres transaction: the exactly-once gate (`processed_events`, or the
//! processor's own rows for the events they gate, which its `apply` finds), the
//! processor's effects, dead letters, the group's stored offsets and the wake-up of
//! consistency waiters, all committed together. A batch the database refuses is begun
//! again, one event at a time, each in a savepoint, to isolate the poison record.
//!
//! A batch costs as few round trips as its statements: under load every round trip waits
//! for both the process and its Postgres backend to get a core, so the batch's effects run
//! without a savepoint of their own, and the offsets and the notification go in one
//! statement.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use dhanman_plumbing::trace::{self, TraceParent};
use dhanman_schemas::{Event, topics};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{Decoded, NextOffsets, next_offsets};
use super::dead_letter::{DeadLetter, dead_letter};
use super::{Applied, ApplyError, BatchReport, Class, Incoming, Processor, Runtime, metric};
use crate::{Error, Result};
use dhanman_plumbing::panic_message;

impl<P: Processor> Runtime<P> {
    /// One attempt at a batch: one transaction, or an error that is transient. `offsets`:
    /// whether the transaction stores the batch's next offsets too (not for a lane of a
    /// batch split in several, see [`Runtime::store_split_offsets`]).
    pub(super) async fn process(
        &self,
        batch: &[Incoming],
        decoded: Option<Vec<Decoded>>,
        attempt: u32,
        offsets: bool,
    ) -> Result<BatchReport> {
        let started = Instant::now();
        let decoded = match decoded {
            Some(decoded) => decoded,
            None => self.decode_all(batch).await?,
        };
        let decoded_at = Instant::now();
        let mut tx = self.pool.begin().await.map_err(Error::Database)?;
        let mut report = BatchReport {
            records: batch.len(),
            ..BatchReport::default()
        };
        let name = self.processor.name().to_string();

        // Events in this batch, first occurrence of each id only; those the processor does
        // nothing with are counted and go no further.
        let mut seen = HashSet::new();
        let mut candidates: Vec<(usize, &Event)> = Vec::new();
        for (i, d) in decoded.iter().enumerate() {
            if let Decoded::Event(event) = d
                && seen.insert(event.envelope().event_id)
            {
                if self.processor.ignores(event) {
                    report.ignored += 1;
                } else {
                    candidates.push((i, event));
                }
            }
        }
        let mut poison: BTreeMap<usize, (&'static str, String)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decoded::Poison { class, reason } => Some((i, (*class, reason.clone()))),
                Decoded::Event(_) => None,
            })
            .collect();

        let fresh = mark_processed(&mut tx, self.processor.as_ref(), batch, &candidates).await?;
        report.duplicates = decoded.len() - poison.len() - report.ignored - fresh.len();
        let events: Vec<&Event> = fresh.iter().map(|(_, e)| *e).collect();
        // Each event continues the trace its record carries (a new one if it carries none);
        // what `apply` writes to the outbox for it is a child of that span.
        let spans = consumer_spans(batch, &fresh);
        for (i, event) in &fresh {
            let record = &batch[*i];
            let span = spans.get(&event.envelope().event_id);
            tracing::debug!(
                processor = %name, topic = %record.topic, partition = record.partition,
                offset = record.offset, event_id = %event.envelope().event_id,
                correlation_id = %event.envelope().correlation_id,
                trace_id = %span.map(TraceParent::trace_id).unwrap_or_default(),
                traceparent = %span.map(ToString::to_string).unwrap_or_default(),
                "applying event"
            );
        }
        // No savepoint around the batch's effects (two round trips a batch): a batch the
        // database refuses is begun again, its events one at a time.
        let applied = if events.is_empty() {
            Ok(Applied::default())
        } else {
            trace::in_batch(spans.clone(), self.apply_guarded(&mut tx, &events)).await
        };
        // The events applied by the end of the batch (before it or by it), for the
        // notification that wakes their waiters.
        let mut settled: Vec<Uuid> = Vec::with_capacity(fresh.len());
        match applied {
            Ok(found) => {
                let before = found.before.min(fresh.len());
                report.applied = fresh.len() - before;
                report.duplicates += before;
                settled.extend(events.iter().map(|e| e.envelope().event_id));
            }
            Err(e) if e.class() == Class::Transient => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, events = fresh.len(), "batch refused by the database, isolating the poison record");
                // The refusal aborted the transaction, gate rows and all: begin again, and
                // go one event at a time, each with its own gate row and savepoint.
                tx.rollback().await.map_err(Error::Database)?;
                tx = self.pool.begin().await.map_err(Error::Database)?;
                for (i, event) in &fresh {
                    let one = [*event];
                    let single: [(usize, &Event); 1] = [(*i, *event)];
                    let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                    if mark_processed(&mut sp, self.processor.as_ref(), batch, &single)
                        .await?
                        .is_empty()
                    {
                        // Applied by another member since the batch began.
                        sp.rollback().await?;
                        report.duplicates += 1;
                        settled.push(event.envelope().event_id);
                        continue;
                    }
                    let applied =
                        trace::in_batch(spans.clone(), self.apply_guarded(&mut sp, &one)).await;
                    match applied {
                        Ok(found) => {
                            sp.commit().await?;
                            let before = found.before.min(one.len());
                            report.applied += one.len() - before;
                            report.duplicates += before;
                            settled.push(event.envelope().event_id);
                        }
                        Err(e) if e.class() == Class::Transient => return Err(e.into()),
                        Err(e) => {
                            sp.rollback().await?;
                            poison.insert(*i, ("rejected", e.to_string()));
                        }
                    }
                }
            }
        }

        let mut dead_lettered = Vec::with_capacity(poison.len());
        for (i, (class, reason)) in &poison {
            let record = &batch[*i];
            let correlation_id = record.header("correlation_id").unwrap_or_default();
            let traceparent = record.header(trace::HEADER).unwrap_or_default();
            tracing::warn!(
                topic = %record.topic, partition = record.partition, offset = record.offset,
                correlation_id = %correlation_id, %traceparent, class, reason = %reason,
                "dead-lettering record"
            );
            let logical = record
                .topic
                .strip_prefix(&self.config.topic_prefix)
                .unwrap_or(&record.topic);
            let letter = DeadLetter {
                record,
                logical_topic: logical,
                class,
                reason,
                attempts: attempt,
            };
            dead_letter(&mut tx, &self.group_id(), &name, letter).await?;
            dead_lettered.push((topics::dlq(&record.topic), *class));
        }
        report.dead_lettered = poison.len();

        // The offsets and the wake-up of consistency waiters (sent at the commit) in one
        // statement.
        let stored = (self.store_group_offsets && offsets).then(|| next_offsets(batch));
        let notify = (report.applied > 0).then(|| crate::applied::notification(&name, &settled));
        store_offsets_and_notify(
            &mut tx,
            &self.group_id(),
            stored.as_ref(),
            notify.as_deref(),
        )
        .await?;
        tx.commit().await.map_err(Error::Database)?;
        record_outcomes(&name, &report, &dead_lettered);
        tracing::debug!(
            records = batch.len(),
            decode_ms = (decoded_at - started).as_secs_f64() * 1000.0,
            transaction_ms = decoded_at.elapsed().as_secs_f64() * 1000.0,
            "batch timings"
        );
        Ok(report)
    }

    /// Applies a batch as the live group would, retrying transient failures.
    pub async fn apply_batch(&self, batch: &[Incoming]) -> BatchReport {
        self.process_with_retry(batch, None, true).await
    }

    /// The processor's `apply`, with a panic inside it (a defect that some record brings
    /// out) taken as poison: the batch is isolated and the record that panics alone is
    /// dead-lettered, instead of the processor going down on it again after every restart.
    pub(super) async fn apply_guarded(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> std::result::Result<Applied, ApplyError> {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(self.processor.apply(conn, events))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied,
            Err(payload) => Err(ApplyError::Poison(format!(
                "applying panicked: {}",
                panic_message(&*payload)
            ))),
        }
    }
}

/// The consumer span of each event about to be applied: a child of the `traceparent` its
/// record carries, or a new trace when it carries none (or a malformed one).
pub(super) fn consumer_spans(
    batch: &[Incoming],
    fresh: &[(usize, &Event)],
) -> HashMap<Uuid, TraceParent> {
    fresh
        .iter()
        .map(|(i, event)| {
            let span = batch[*i]
                .header(trace::HEADER)
                .and_then(|v| TraceParent::parse(&v))
                .map_or_else(TraceParent::new_root, |parent| parent.child());
            (event.envelope().event_id, span)
        })
        .collect()
}

/// Metrics of a committed batch.
pub(super) fn record_outcomes(
    processor: &str,
    report: &BatchReport,
    dead_lettered: &[(String, &str)],
) {
    for (outcome, n) in [
        ("applied", report.applied),
        ("skipped_duplicate", report.duplicates),
        ("ignored", report.ignored),
        ("dead_lettered", report.dead_lettered),
    ] {
        if n > 0 {
            metrics::counter!(metric::EVENTS, "processor" => processor.to_string(), "outcome" => outcome)
                .increment(n as u64);
        }
    }
    for (topic, class) in dead_lettered {
        metrics::counter!(metric::FAILURES, "processor" => processor.to_string(), "class" => "poison")
            .increment(1);
        metrics::counter!(
            metric::DLQ_RECORDS,
            "topic" => topic.clone(),
            "processor" => processor.to_string(),
            "class" => class.to_string()
        )
        .increment(1);
    }
}

/// The gate: inserts gate rows for the candidates that need one and returns, in their
/// order, those this processor had not applied before, with every candidate whose effects
/// are its own gate ([`Processor::gated_by_effects`]): the processor's `apply` tells those
/// apart by its rows' keys, in the statement that writes them, and reports what it found.
pub(super) async fn mark_processed<'e, P: Processor + ?Sized>(
    conn: &mut PgConnection,
    processor: &P,
    batch: &[Incoming],
    candidates: &[(usize, &'e Event)],
) -> Result<Vec<(usize, &'e Event)>> {
    let own: Vec<bool> = candidates
        .iter()
        .map(|(_, e)| processor.gated_by_effects(e))
        .collect();
    let rows: Vec<(usize, &Event)> = candidates
        .iter()
        .zip(&own)
        .filter(|(_, own)| !**own)
        .map(|(c, _)| *c)
        .collect();
    let mut new: HashSet<Uuid> = HashSet::new();
    if !rows.is_empty() {
        let ids: Vec<Uuid> = rows.iter().map(|(_, e)| e.envelope().event_id).collect();
        let topics: Vec<&str> = rows.iter().map(|(i, _)| batch[*i].topic.as_str()).collect();
        let partitions: Vec<i32> = rows.iter().map(|(i, _)| batch[*i].partition).collect();
        let offsets: Vec<i64> = rows.iter().map(|(i, _)| batch[*i].offset).collect();
        let inserted: Vec<(Uuid,)> = sqlx::query_as(
            "insert into processed_events (processor, event_id, topic, partition, \"offset\")
             select $1, * from unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[])
             on conflict do nothing returning event_id",
        )
        .bind(processor.name())
        .bind(&ids)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::Database)?;
        new.extend(inserted.into_iter().map(|(id,)| id));
    }
    Ok(candidates
        .iter()
        .zip(&own)
        .filter(|((_, e), own)| **own || new.contains(&e.envelope().event_id))
        .map(|(c, _)| *c)
        .collect())
}

/// Upserts the group's offsets. They only move forward here, so a member that lost its
/// partitions mid-batch cannot drag the new owner back (that would only re-read, but
/// still); rewinding is the offsets tool's job, and it refuses while members are live.
pub(super) async fn store_offsets(
    conn: &mut PgConnection,
    group: &str,
    next: &NextOffsets,
) -> Result<()> {
    store_offsets_and_notify(conn, group, Some(next), None).await
}

/// [`store_offsets`] (given offsets) and, given its payload
/// ([`crate::applied::notification`]), the notification that wakes the API's queries
/// waiting on a processor's consistency tokens (`NOTIFY dhanman_applied`, delivered at the
/// commit), in one statement: one round trip at the end of a batch.
pub(super) async fn store_offsets_and_notify(
    conn: &mut PgConnection,
    group: &str,
    next: Option<&NextOffsets>,
    notify: Option<&str>,
) -> Result<()> {
    if next.is_none_or(|n| n.is_empty()) && notify.is_none() {
        return Ok(());
    }
    let next = next.into_iter().flatten();
    let (keys, offsets): (Vec<_>, Vec<i64>) = next.map(|(k, o)| (k, *o)).unzip();
    let topics: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = keys.iter().map(|(_, p)| *p).collect();
    sqlx::query(
        "with stored as (
             insert into consumer_offsets (group_id, topic, partition, next_offset)
             select $1, * from unnest($2::text[], $3::int[], $4::bigint[])
             on conflict (group_id, topic, partition) do update
                set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),
                    updated_at = now()
         )
         select pg_notify('dhanman_applied', $5) where $5::text is not null",
    )
    .bind(group)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(notify)
    .execute(conn)
    .await
    .map_err(Error::Database)?;
    Ok(())
}
