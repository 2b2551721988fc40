//! Batching: decoding a batch's records (a record that cannot be decoded is poison, never
//! a crash), splitting a batch by key into lanes that commit concurrently, and the
//! next offsets a batch stores.

use std::collections::{BTreeMap, HashMap};

use dhanman_schemas::Event;
use rdkafka::consumer::StreamConsumer;

use super::consumer::StoredOffsets;
use super::{Incoming, Processor, Runtime};
use crate::Result;
use dhanman_plumbing::panic_message;

/// Outcome of one batch, for logs, tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub applied: usize,
    pub duplicates: usize,
    /// Events the processor does nothing with ([`super::Processor::ignores`]).
    pub ignored: usize,
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

/// The fewest records a lane is given. Below it a second transaction costs more round trips
/// than it saves: below full load a batch is small and stays whole; a backlog's batches
/// split.
const MIN_LANE_RECORDS: usize = 250;

impl<P: Processor> Runtime<P> {
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
        match self.codec.decode_event(payload).await {
            Ok(event) => Ok(Decoded::Event(Box::new(event))),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => Ok(Decoded::Poison {
                class: match e {
                    dhanman_schemas::Error::Invalid(_) => "invalid",
                    _ => "undecodable",
                },
                reason: e.to_string(),
            }),
        }
    }
}

/// A batch's records and, when decoded ahead, their decodings.
pub(super) type Lane = (Vec<Incoming>, Option<Vec<Decoded>>);

/// A batch split into at most `lanes` parts, each applied in its own transaction,
/// concurrently, so that Postgres works on more than one core. Records go by key (the
/// aggregate whose events must stay in order, [`dhanman_schemas::events::Record::key`]), so
/// one aggregate's records stay in one part and in order, across topics too; records
/// without a key go by their partition. The parts are made as even as whole aggregates
/// allow (the largest first, each to the part with the fewest records so far), since a
/// batch is done when its largest part is; each holds about [`MIN_LANE_RECORDS`] or more.
/// The balance rows the parts share are updated last and in key order, so the parts wait
/// on each other only briefly and never deadlock.
pub(super) fn split(
    batch: Vec<Incoming>,
    decoded: Option<Vec<Decoded>>,
    lanes: usize,
) -> Vec<Lane> {
    let count = lanes.min(batch.len() / MIN_LANE_RECORDS).max(1);
    if count == 1 {
        return vec![(batch, decoded)];
    }
    let assigned = assign(&batch, count);
    let mut split: Vec<Lane> = (0..count)
        .map(|_| (Vec::new(), decoded.as_ref().map(|_| Vec::new())))
        .collect();
    let mut decoded = decoded.map(Vec::into_iter);
    for (record, lane) in batch.into_iter().zip(assigned) {
        let lane = &mut split[lane];
        if let (Some(all), Some(mine)) = (decoded.as_mut(), lane.1.as_mut()) {
            mine.extend(all.next());
        }
        lane.0.push(record);
    }
    split.retain(|(records, _)| !records.is_empty());
    split
}

/// What keeps records together in a lane: their key, or their partition when they have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Aggregate<'a> {
    Key(&'a [u8]),
    Partition(&'a str, i32),
}

fn aggregate(record: &Incoming) -> Aggregate<'_> {
    match &record.key {
        Some(key) => Aggregate::Key(key),
        None => Aggregate::Partition(&record.topic, record.partition),
    }
}

/// The lane of each record of `batch`, of `lanes`: each aggregate, the largest first (ties
/// in key order, so the same batch splits the same way), to the lane with the fewest
/// records so far.
fn assign(batch: &[Incoming], lanes: usize) -> Vec<usize> {
    let mut sizes: HashMap<Aggregate<'_>, usize> = HashMap::new();
    for record in batch {
        *sizes.entry(aggregate(record)).or_default() += 1;
    }
    let mut largest_first: Vec<(Aggregate<'_>, usize)> = sizes.into_iter().collect();
    largest_first.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut load = vec![0usize; lanes];
    let lane_of: HashMap<Aggregate<'_>, usize> = largest_first
        .into_iter()
        .map(|(aggregate, size)| {
            let lightest = (0..lanes).min_by_key(|&l| load[l]).unwrap_or(0);
            load[lightest] += size;
            (aggregate, lightest)
        })
        .collect();
    batch.iter().map(|r| lane_of[&aggregate(r)]).collect()
}

/// The next offset to read per (topic, partition).
pub(super) type NextOffsets = BTreeMap<(String, i32), i64>;

/// Next offset per partition: one past the highest offset in the batch.
pub(super) fn next_offsets(batch: &[Incoming]) -> NextOffsets {
    let mut next = NextOffsets::new();
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
        keyed(topic, partition, offset, None)
    }

    fn keyed(topic: &str, partition: i32, offset: i64, key: Option<&str>) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition,
            offset,
            key: key.map(|k| k.as_bytes().to_vec()),
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

    /// Each record of `lanes` with the lane it went to.
    fn placed(lanes: &[Lane]) -> Vec<(usize, &Incoming)> {
        lanes
            .iter()
            .enumerate()
            .flat_map(|(lane, (records, _))| records.iter().map(move |r| (lane, r)))
            .collect()
    }

    #[test]
    fn a_batch_below_two_lanes_worth_stays_whole() {
        let batch: Vec<Incoming> = (0..2 * MIN_LANE_RECORDS as i64 - 1)
            .map(|o| keyed("a", 0, o, Some(&format!("k{o}"))))
            .collect();
        let lanes = split(batch, None, 4);
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes[0].0.len(), 2 * MIN_LANE_RECORDS - 1);
        let one = split(vec![record("a", 0, 0)], None, 1);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn an_aggregate_stays_in_one_lane_in_order_across_topics_and_partitions() {
        // 200 aggregates, 20 records each, alternating between two topics: what order
        // they are read in is the order each lane must keep.
        let mut batch = Vec::new();
        for i in 0..4000i64 {
            let key = format!("customer-{}", i % 200);
            let topic = if i % 2 == 0 { "invoices" } else { "payments" };
            batch.push(keyed(topic, (i % 3) as i32, i, Some(&key)));
        }
        let decoded: Vec<Decoded> = (0..4000)
            .map(|i| Decoded::Poison {
                class: "test",
                reason: i.to_string(),
            })
            .collect();
        let lanes = split(batch, Some(decoded), 4);
        assert_eq!(lanes.len(), 4, "a large batch uses every lane");
        let mut lane_of_key: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut last_of_key: HashMap<Vec<u8>, i64> = HashMap::new();
        for (lane, r) in placed(&lanes) {
            let key = r.key.clone().expect("keyed");
            assert_eq!(*lane_of_key.entry(key.clone()).or_insert(lane), lane);
            let last = last_of_key.insert(key, r.offset).unwrap_or(-1);
            assert!(last < r.offset, "a key's records keep their order");
        }
        for (records, decoded) in &lanes {
            // 200 aggregates of 20 records in four lanes: 50 in each.
            assert_eq!(records.len(), 1000);
            // Each record keeps its own decoding.
            let decoded = decoded.as_ref().expect("decoded ahead");
            assert_eq!(decoded.len(), records.len());
            for (r, d) in records.iter().zip(decoded) {
                let Decoded::Poison { reason, .. } = d else {
                    panic!("not the decoding given")
                };
                assert_eq!(reason, &r.offset.to_string());
            }
        }
        let total: usize = lanes.iter().map(|(r, _)| r.len()).sum();
        assert_eq!(total, 4000);
    }

    #[test]
    fn lanes_are_as_even_as_whole_aggregates_allow() {
        // One aggregate of 600 records among 700 of two: it fills a lane of its own, the
        // other three share the rest evenly.
        let mut batch = Vec::new();
        for i in 0..2000i64 {
            let key = if i % 10 < 3 {
                "big".to_string()
            } else {
                format!("small-{}", i / 2)
            };
            batch.push(keyed("a", 0, i, Some(&key)));
        }
        let lanes = split(batch, None, 4);
        let mut sizes: Vec<usize> = lanes.iter().map(|(r, _)| r.len()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes[3], 600, "{sizes:?}");
        assert!(sizes[2] - sizes[0] <= 2, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 2000);
    }

    #[test]
    fn records_without_a_key_stay_with_their_partition() {
        let batch: Vec<Incoming> = (0..2000i64)
            .map(|o| record("a", (o % 8) as i32, o))
            .collect();
        let lanes = split(batch, None, 2);
        let mut lane_of_partition: HashMap<i32, usize> = HashMap::new();
        let mut last: HashMap<i32, i64> = HashMap::new();
        for (lane, r) in placed(&lanes) {
            assert_eq!(*lane_of_partition.entry(r.partition).or_insert(lane), lane);
            assert!(last.insert(r.partition, r.offset).unwrap_or(-1) < r.offset);
        }
        assert_eq!(lane_of_partition.len(), 8);
    }
}
