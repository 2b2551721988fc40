//! What the test broker does and does not do correctly. The README's broker section
//! quotes these tests.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhanman_connectors::kafka::{TimeLookup, client_config, ensure_topics, offset_for_time};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

use crate::helpers::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_and_offsets_for_times_inside_the_log_are_right_and_wrong_answers_are_caught() {
    let topic = format!("{}broker.times", topic_prefix());
    ensure_topics(&bootstrap(), std::slice::from_ref(&topic), 1)
        .await
        .unwrap();
    let producer = producer();
    let t0 = now_ms() - 60_000;
    for i in 0..10i64 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload(&format!("record {i}"))
                    .timestamp(t0 + i * 1000),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let consumer: BaseConsumer = client_config(&bootstrap())
        .set("group.id", "watermarks")
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((low, high), (0, 10));

    let b = bootstrap();
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 + 5000).await.unwrap(),
        TimeLookup::Offset(5)
    );
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 + 5500).await.unwrap(),
        TimeLookup::Offset(6)
    );
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 - 10_000).await.unwrap(),
        TimeLookup::Offset(0)
    );
    // Past the end the right answer is "end". A broker that answers an offset here is
    // caught by the check, never believed.
    let past_end = offset_for_time(&b, &topic, 0, t0 + 100_000).await;
    match past_end {
        Ok(TimeLookup::End) => {}
        Ok(other) => panic!("a time past the end was answered with {other:?}"),
        // The answer was checked against the records and refused (on the test broker:
        // "broker answered 0, but record 0 has the older timestamp ...").
        Err(e) => assert!(e.to_string().contains("broker answered"), "{e}"),
    }
}

async fn assignment(consumer: &StreamConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_splits_the_partitions_and_one_takes_all_when_the_other_leaves() {
    let topic = format!("{}broker.groups", topic_prefix());
    ensure_topics(&bootstrap(), std::slice::from_ref(&topic), 4)
        .await
        .unwrap();
    let group = format!("group-{}", Uuid::new_v4());
    let member = || -> StreamConsumer {
        let c: StreamConsumer = client_config(&bootstrap())
            .set("group.id", &group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        c.subscribe(&[&topic]).unwrap();
        c
    };
    let a = member();
    let b = member();
    // Polling drives the group protocol; the members see no records (the topic is empty).
    let (a_parts, b_parts) = eventually(
        "both members to hold partitions",
        Duration::from_secs(60),
        || {
            let (a, b) = (&a, &b);
            async move {
                let _ = tokio::time::timeout(Duration::from_millis(100), a.recv()).await;
                let _ = tokio::time::timeout(Duration::from_millis(100), b.recv()).await;
                let (pa, pb) = (assignment(a).await, assignment(b).await);
                (!pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4).then_some((pa, pb))
            }
        },
    )
    .await;
    assert!(a_parts.is_disjoint(&b_parts), "{a_parts:?} / {b_parts:?}");
    drop(b);
    let all = eventually(
        "the remaining member to take every partition",
        Duration::from_secs(60),
        || {
            let a = &a;
            async move {
                let _ = tokio::time::timeout(Duration::from_millis(100), a.recv()).await;
                let pa = assignment(a).await;
                (pa.len() == 4).then_some(pa)
            }
        },
    )
    .await;
    assert_eq!(all, BTreeSet::from([0, 1, 2, 3]));
}
