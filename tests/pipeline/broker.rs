//! What the pipeline relies on the broker (Apache Kafka) for, pinned: watermarks,
//! offsets-for-times inside and past the end of the log, a record's timestamp read through
//! the probe (which keeps no partition afterwards), and a consumer group splitting
//! partitions and handing them over when a member leaves. docs/broker.md quotes these.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhanman_connectors::kafka::{TimeLookup, ensure_topics, offset_for_time, record_timestamps};
use dhanman_plumbing::kafka::client_config;
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
async fn watermarks_and_offsets_for_times_inside_and_past_the_end_of_the_log() {
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
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 + 9000).await.unwrap(),
        TimeLookup::Offset(9)
    );
    // Past the newest record the answer is "end" (-1 on the wire), not an offset.
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 + 9001).await.unwrap(),
        TimeLookup::End
    );
    assert_eq!(
        offset_for_time(&b, &topic, 0, t0 + 100_000).await.unwrap(),
        TimeLookup::End
    );

    // The age of a waiting record, as the lag sample reads it, through the shared probe:
    // the record's own timestamp, and the probe left with nothing assigned (an assigned
    // probe kept fetching, and every later look-up waited behind its fetches).
    let probe = dhanman_connectors::kafka::probe(&b).unwrap();
    let times =
        record_timestamps(&probe, &[((topic.clone(), 0), 5)], Duration::from_secs(10)).unwrap();
    assert_eq!(times.get(&(topic.clone(), 0)), Some(&(t0 + 5000)));
    assert_eq!(probe.assignment().unwrap().count(), 0);
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

/// The broker stopped in the middle of a flow (a broker of this test's own, so the other
/// tests keep theirs): the API keeps taking commands, and once the broker is back the relay
/// and the processors carry on by themselves; every invoice is posted exactly once and
/// nothing is dead-lettered for the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_flow_loses_doubles_and_dead_letters_nothing() {
    use crate::kafka::PrivateBroker;
    use rust_decimal::Decimal;

    let broker = PrivateBroker::start().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let kafka = broker.bootstrap();
    let up = setup.spawn_with_env(&["up"], &[("KAFKA_BOOTSTRAP_SERVERS", kafka.as_str())]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Restart Society").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;

    let mut last = String::new();
    for _ in 0..10 {
        last = invoice(&api, customer, "100.00").await.1;
    }
    ledger_applied(&api, &last).await;

    broker.down().await;
    // Commands are taken while the broker is away: their events wait in the outbox.
    for _ in 0..20 {
        last = invoice(&api, customer, "100.00").await.1;
    }
    up.wait_for_log("outbox relay interrupted", Duration::from_secs(90))
        .await;
    let waiting = db
        .count(
            "select count(*) from outbox_pending join outbox using (id) where derived_from is null",
        )
        .await;
    assert!(waiting > 0, "the outage must hold events back");
    broker.up().await;

    // Every invoice reaches the books once the relay and the ledger have reconnected.
    ledger_applied(&api, &last).await;
    db.wait_count(
        "every invoice to be posted",
        "select count(*) from journal_entries",
        30,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(db.count("select count(*) from journal_entries").await, 30);
    let (receivable,): (Decimal,) = sqlx::query_as(
        "select debit_total - credit_total from party_balances
          where account_code = '1200' and party_id = $1",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(receivable, Decimal::new(300_000, 2));
    assert_eq!(
        db.count("select count(*) from outbox where raw_value is not null")
            .await,
        0,
        "nothing dead-lettered"
    );
    let log = up.log_text();
    assert!(!log.contains("dead-lettering"), "{log}");
    drop(up);
    db.drop_db().await;
}
