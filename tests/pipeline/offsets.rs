//! On assignment the consumer seeks to the offsets stored in Postgres, not to Kafka's
//! committed offsets (which trail them after a crash between the two commits); a stored
//! offset past the log's end (a recreated topic, a broker that lost records) starts the
//! partition from the log's start and is brought back within the log, so that no later
//! assignment skips the records below it; before that, `dhanman lag` counts such a
//! partition's whole log as lag, not 0, and shows the offset as stored.

use std::time::Duration;

use dhanman_schemas::events::Record;
use dhanman_schemas::topics;
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

use crate::helpers::*;

/// `n` payments of one new customer of `org` sent to `topic` (created with 4 partitions):
/// each one's partition, offset and event id, all on one partition, in order.
async fn payments_of_one_customer(
    setup: &Setup,
    org: Uuid,
    topic: &str,
    n: i64,
    tag: &str,
) -> Vec<(i32, i64, Uuid)> {
    dhanman_connectors::kafka::ensure_topics(&bootstrap(), &[topic.to_string()], 4)
        .await
        .unwrap();
    let (codec, producer, customer) = (setup.codec(), producer(), Uuid::now_v7());
    let mut sent = Vec::new();
    for i in 0..n {
        let e = payment(org, customer, 1000 + i, &format!("{tag}-{i}"));
        let value = codec.encode(&e).await.unwrap();
        let delivery = producer
            .send(
                FutureRecord::to(topic).key(&e.key()).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        sent.push((delivery.partition, delivery.offset, e.envelope.event_id));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_starts_where_postgres_says_not_where_kafka_says() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Offsets Society").await;
    let topic = setup.topic(topics::PAYMENTS);
    // Ten payments of one customer: one partition, offsets in order.
    let sent = payments_of_one_customer(&setup, org, &topic, 10, "offsets").await;
    let partition = sent[0].0;
    assert!(sent.iter().all(|(p, _, _)| *p == partition));

    // As if the processor had applied the first six and crashed before telling Kafka.
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    sqlx::query(
        "insert into consumer_offsets (group_id, topic, partition, next_offset) values ($1, $2, $3, $4)",
    )
    .bind(&group)
    .bind(&topic)
    .bind(partition)
    .bind(sent[6].1)
    .execute(&db.pool)
    .await
    .unwrap();

    let processor = setup.spawn(&["process", "ledger"]);
    let processed = "select count(*) from applied_events";
    db.wait_count(
        "the last four payments to be applied",
        processed,
        4,
        Duration::from_secs(60),
    )
    .await;
    // Give it the chance to apply more than it should, then check it did not: the stored
    // offset must move to the end and nothing before offset 6 may be applied.
    db.wait_count(
        "the stored offset to reach the end",
        &format!(
            "select count(*) from consumer_offsets where group_id = '{group}' and next_offset = {}",
            sent[9].1 + 1
        ),
        1,
        Duration::from_secs(60),
    )
    .await;
    let applied: Vec<(Uuid,)> = sqlx::query_as("select event_id from applied_events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut applied: Vec<Uuid> = applied.into_iter().map(|(id,)| id).collect();
    applied.sort();
    let mut expected: Vec<Uuid> = sent[6..].iter().map(|(_, _, id)| *id).collect();
    expected.sort();
    assert_eq!(applied, expected);
    assert!(
        processor.log_text().contains("from_postgres=1"),
        "{}",
        processor.log_text()
    );
    drop((processor, api));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_past_the_log_end_reads_from_the_start_and_comes_back() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Lost Records Society").await;
    let topic = setup.topic(topics::PAYMENTS);
    let sent = payments_of_one_customer(&setup, org, &topic, 5, "lost").await;
    let (partition, end) = (sent[0].0, sent[4].1 + 1);

    // The database says the group read a thousand records the log no longer has.
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    sqlx::query(
        "insert into consumer_offsets (group_id, topic, partition, next_offset) values ($1, $2, $3, 1000)",
    )
    .bind(&group)
    .bind(&topic)
    .bind(partition)
    .execute(&db.pool)
    .await
    .unwrap();

    // Before any member takes it, the lag is what the processor will read: the whole log.
    let run = dhanman(&setup, &["lag", "--json", "--group", &group]).await;
    assert!(run.ok, "{}", run.stderr);
    let report = run.json();
    let lagging = report["groups"][0]["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["topic"] == topic && p["partition"] == partition)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no partition {partition} of {topic} in {report}"));
    assert_eq!(
        (&lagging["committed"], &lagging["log_end"], &lagging["lag"]),
        (&0.into(), &end.into(), &end.into()),
        "{lagging}"
    );
    assert_eq!(lagging["stored_outside_log"], 1000, "{lagging}");

    let processor = setup.spawn(&["process", "ledger"]);
    db.wait_count(
        "the five payments the log holds to be applied",
        "select count(*) from applied_events",
        5,
        Duration::from_secs(60),
    )
    .await;
    let stored = format!(
        "select count(*) from consumer_offsets
          where group_id = '{group}' and topic = '{topic}' and partition = {partition}
            and next_offset = {end}"
    );
    db.wait_count(
        "the stored offset back at the log's end",
        &stored,
        1,
        Duration::from_secs(60),
    )
    .await;
    processor
        .wait_for_log("past the end of the log", Duration::from_secs(5))
        .await;
    drop((processor, api));
    db.drop_db().await;
}
