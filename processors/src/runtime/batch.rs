//! Batching: decoding a batch's records (a record that cannot be decoded is poison, never
//! a crash), splitting a batch by partition into lanes that commit concurrently, and the
//! next offsets a batch stores.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dhanman_schemas::Event;
use rdkafka::consumer::StreamConsumer;

use super::consumer::StoredOffsets;
use super::retry::panic_message;
use super::{Incoming, Processor, Runtime};
use crate::Result;

/// Outcome of one batch, for logs, tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
}

/// A record after decoding: an event to apply, or the reason it is poison.
pub(super) enum Decoded {
    Event(Box<Event>),
    Poison { class: &'static str, reason: String },
}

pub(super) struct Gathered {
    pub(super) batch: Vec<Incoming>,
    pub(super) decoded: Option<Vec<Decoded>>,
}

impl<P: Processor> Runtime<P> {
    /// A batch split by partition into at most `config.lanes` parts, each applied in its own
    /// transaction, concurrently: a partition's records stay in one part and in order, and
    /// each part stores the offsets of its own partitions. Postgres then works on more than
    /// one core. The balance rows the parts share are updated last and in key order, so
    /// the parts wait on each other only briefly and never deadlock.
    pub(super) fn lanes(
        &self,
        batch: Vec<Incoming>,
        decoded: Option<Vec<Decoded>>,
    ) -> Vec<(Vec<Incoming>, Option<Vec<Decoded>>)> {
        if self.config.lanes <= 1 {
            return vec![(batch, decoded)];
        }
        let partitions: BTreeSet<(&str, i32)> = batch
            .iter()
            .map(|r| (r.topic.as_str(), r.partition))
            .collect();
        let lane_of: HashMap<(&str, i32), usize> = partitions
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, i % self.config.lanes.max(1)))
            .collect();
        let count = lane_of.values().max().map_or(0, |m| m + 1);
        let mut lanes: Vec<(Vec<Incoming>, Option<Vec<Decoded>>)> = (0..count)
            .map(|_| (Vec::new(), decoded.as_ref().map(|_| Vec::new())))
            .collect();
        let assigned: Vec<usize> = batch
            .iter()
            .map(|r| lane_of[&(r.topic.as_str(), r.partition)])
            .collect();
        let mut decoded = decoded.map(Vec::into_iter);
        for (record, lane) in batch.into_iter().zip(assigned) {
            let lane = &mut lanes[lane];
            if let (Some(all), Some(mine)) = (decoded.as_mut(), lane.1.as_mut()) {
                mine.extend(all.next());
            }
            lane.0.push(record);
        }
        lanes
    }

    /// The next batch, decoded ahead of its transaction. A transient failure (registry
    /// down) leaves it undecoded; the transaction's retry loop decodes it again.
    pub(super) async fn gather(&self, consumer: &StreamConsumer<StoredOffsets>) -> Gathered {
        let batch = self.collect(consumer).await;
        let decoded = self.decode_all(&batch).await.ok();
        Gathered { batch, decoded }
    }

    pub(super) async fn decode_all(&self, batch: &[Incoming]) -> Result<Vec<Decoded>> {
        let mut decoded = Vec::with_capacity(batch.len());
        for record in batch {
            decoded.push(self.decode(record).await?);
        }
        Ok(decoded)
    }

    /// A record decoded, or the reason it is poison. No record can take the processor down:
    /// a panic while decoding one (a defect, here or in a library) makes that record poison.
    pub(super) async fn decode(&self, record: &Incoming) -> Result<Decoded> {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(self.decode_unguarded(record))
            .catch_unwind()
            .await
        {
            Ok(decoded) => decoded,
            Err(payload) => Ok(Decoded::Poison {
                class: "undecodable",
                reason: format!("decoding panicked: {}", panic_message(&*payload)),
            }),
        }
    }

    pub(super) async fn decode_unguarded(&self, record: &Incoming) -> Result<Decoded> {
        if let Some(defect) = &record.defect {
            return Ok(Decoded::Poison {
                class: "undecodable",
                reason: defect.clone(),
            });
        }
        let Some(payload) = record.payload.as_deref() else {
            return Ok(Decoded::Poison {
                class: "undecodable",
                reason: "record has no value".into(),
            });
        };
        let decoded = match self.codec.decode(payload).await {
            Ok(d) => d,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                return Ok(Decoded::Poison {
                    class: "undecodable",
                    reason: e.to_string(),
                });
            }
        };
        match Event::from_json(&decoded.name, decoded.json) {
            Ok(event) => Ok(Decoded::Event(Box::new(event))),
            Err(e) => Ok(Decoded::Poison {
                class: "invalid",
                reason: e.to_string(),
            }),
        }
    }
}

/// Next offset per partition: one past the highest offset in the batch.
pub(super) fn next_offsets(batch: &[Incoming]) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in batch {
        let slot = next.entry((r.topic.clone(), r.partition)).or_insert(0);
        *slot = (*slot).max(r.offset + 1);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: None,
            headers: vec![],
            defect: None,
        }
    }

    #[test]
    fn next_offsets_are_one_past_the_highest_per_partition() {
        let batch = [
            record("a", 0, 5),
            record("a", 0, 3),
            record("a", 1, 9),
            record("b", 0, 0),
        ];
        let next = next_offsets(&batch);
        assert_eq!(next[&("a".to_string(), 0)], 6);
        assert_eq!(next[&("a".to_string(), 1)], 10);
        assert_eq!(next[&("b".to_string(), 0)], 1);
    }
}
