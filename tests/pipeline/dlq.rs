//! Poison records go to `<topic>.dlq` with headers naming the error and their origin;
//! the records after them are posted.

use std::time::Duration;

use dhanman_schemas::events::{InvoiceCreated, Record};
use dhanman_schemas::topics;
use uuid::Uuid;

use crate::helpers::*;

fn invoice(org: Uuid, number: &str, amount: &str) -> InvoiceCreated {
    invoice_created(org, Uuid::now_v7(), number, amount)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_keeps_flowing() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // Only the ledger consumes: every dead letter here is its own.
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let (org, _) = create_org(&setup, "Poison Society").await;
    let codec = setup.codec();
    let topic = setup.topic(topics::INVOICES);
    // One key: every record lands on the same partition, in this order.
    let key = "one-customer";

    let good_before = invoice(org, "OK-1", "100.00");
    let negative = invoice(org, "BAD-AMOUNT", "-5.00");
    let unknown_org = invoice(Uuid::now_v7(), "NO-ORG", "10.00");
    let good_after = invoice(org, "OK-2", "200.00");
    let encode = |e: &InvoiceCreated| {
        let codec = &codec;
        let json = serde_json::to_value(e).unwrap();
        async move {
            codec
                .encode_json(InvoiceCreated::NAME, 2, &json)
                .await
                .unwrap()
        }
    };
    let mut unknown_schema = encode(&good_before).await;
    unknown_schema[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("good", encode(&good_before).await),
        ("not avro", b"\x01this is not a Confluent record".to_vec()),
        ("unknown schema id", unknown_schema),
        ("negative amount", encode(&negative).await),
        ("unknown organization", encode(&unknown_org).await),
        ("good", encode(&good_after).await),
    ];
    produce_all(
        &producer(),
        values
            .iter()
            .map(|(_, v)| (topic.clone(), key, v.as_slice())),
    )
    .await;

    let dead = read_topic(&setup.topic(&topics::dlq(topics::INVOICES)), 4).await;
    let mut classes: Vec<&str> = dead
        .iter()
        .map(|r| r.header("dlq.error.class").unwrap())
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        ["invalid", "rejected", "undecodable", "undecodable"]
    );
    for record in &dead {
        assert_eq!(record.header("dlq.source.topic"), Some(topic.as_str()));
        assert_eq!(record.header("dlq.processor"), Some("ledger"));
        assert!(record.header("dlq.source.partition").is_some());
        assert!(record.header("dlq.failed.at").is_some());
        assert!(record.header("dlq.attempts").is_some());
        assert!(!record.header("dlq.error").unwrap_or_default().is_empty());
        let offset: usize = record.header("dlq.source.offset").unwrap().parse().unwrap();
        // The dead letter is the original record, byte for byte.
        let (_, original) = &values[offset];
        assert_eq!(&record.payload, original);
    }
    let negative_letter = dead
        .iter()
        .find(|r| r.header("dlq.error.class") == Some("invalid"))
        .unwrap();
    assert!(
        negative_letter
            .header("dlq.error")
            .unwrap()
            .contains("amount"),
        "{:?}",
        negative_letter.header("dlq.error")
    );

    // Both good records were posted; nothing else was.
    let posted_after = format!(
        "select count(*) from journal_entries where reference_id = '{}'",
        good_after.invoice_id
    );
    db.wait_count(
        "the record after the poison to be posted",
        &posted_after,
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(db.count("select count(*) from journal_entries").await, 2);
    assert_eq!(
        db.count("select count(*) from outbox where raw_value is not null")
            .await,
        4
    );
    db.drop_db().await;
}
