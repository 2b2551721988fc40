//! Poison records go to `<topic>.dlq` with headers naming the error and their origin;
//! the records after them are posted; so are hostile records' (NUL bytes in the key and
//! headers, a header name that is not UTF-8, written through Kafka's protocol itself),
//! without stalling the partition or taking the process down, their dead letters published
//! with the key and header bytes as read; a user event naming a user
//! of another organization is refused, and the user left as their organization made them.

use std::time::Duration;

use dhanman_schemas::events::{InvoiceCreated, Record};
use dhanman_schemas::topics;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
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

/// Records whose key and header values hold NUL bytes (which Postgres's `text` and `json`
/// refuse) and whose header name is not UTF-8 (which rdkafka panics on reading) are
/// dead-lettered like any other poison, and the partition keeps flowing: the first used to
/// fail its dead letter's insert on every attempt and hold the partition for ever, the
/// second to take the whole process down, again at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_nul_bytes_or_a_header_name_not_utf8_are_dead_lettered() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, org) = api_with_org(&setup, "Hostile Bytes Society").await;
    let _relay = setup.spawn(&["relay"]);
    let mut ledger = setup.spawn(&["process", "ledger"]);
    let codec = setup.codec();
    let topic = setup.topic(topics::INVOICES);
    let unreadable = invoice(org, "HEADER-NAME", "10.00");
    let after = invoice(org, "AFTER", "20.00");
    let (unreadable_value, after_value) = (
        codec.encode(&unreadable).await.unwrap(),
        codec.encode(&after).await.unwrap(),
    );

    // All on partition 0, in this order.
    let producer = producer();
    let nul = FutureRecord::to(&topic)
        .partition(0)
        .key(&b"key\0with a NUL"[..])
        .payload(&b"\x01not a Confluent record"[..])
        .headers(OwnedHeaders::new().insert(Header {
            key: "note",
            value: Some(&b"a\0b"[..]),
        }));
    producer
        .send(nul, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    produce_raw(
        &topic,
        0,
        b"header-name",
        &unreadable_value,
        &[(b"\xff\xfe", b"x")],
    )
    .await;
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("after")
                .payload(&after_value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let posted_after = format!(
        "select count(*) from journal_entries where reference_id = '{}'",
        after.invoice_id
    );
    db.wait_count(
        "the record after the hostile ones to be posted",
        &posted_after,
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(db.count("select count(*) from journal_entries").await, 1);
    let dead = read_topic(&setup.topic(&topics::dlq(topics::INVOICES)), 2).await;
    let by_offset = |offset: &str| {
        dead.iter()
            .find(|r| r.header("dlq.source.offset") == Some(offset))
            .unwrap_or_else(|| panic!("no dead letter of offset {offset}: {dead:?}"))
    };
    let (first, second) = (by_offset("0"), by_offset("1"));
    assert_eq!(first.header("dlq.error.class"), Some("undecodable"));
    // Published as it was read: the key and the header byte for byte, NUL and all.
    assert_eq!(first.header_bytes("note"), Some(&b"a\0b"[..]), "{first:?}");
    assert_eq!(first.key.as_deref(), Some(&b"key\0with a NUL"[..]));
    assert_eq!(first.payload, b"\x01not a Confluent record");
    assert_eq!(second.header("dlq.error.class"), Some("undecodable"));
    let reason = second.header("dlq.error").unwrap_or_default();
    assert!(reason.contains("not UTF-8"), "{reason}");
    assert_eq!(second.payload, unreadable_value);
    // The process that read them is the one that posted the record after them.
    assert!(
        matches!(ledger.child.try_wait(), Ok(None)),
        "the ledger exited: {}",
        ledger.log_text()
    );
    db.drop_db().await;
}

/// Produces one record through Kafka's protocol itself (Produce v3 carrying a record batch
/// of magic 2, written here byte by byte), for what a client library will not write: a
/// header name that is not UTF-8. To the partition's leader, acknowledged by all replicas.
async fn produce_raw(
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        varint(out, b.len() as i64);
        out.extend_from_slice(b);
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    let leader = {
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = dhanman_plumbing::kafka::client_config(&bootstrap())
                .create()
                .unwrap();
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            let id = metadata.topics()[0]
                .partitions()
                .iter()
                .find(|p| p.id() == partition)
                .map(|p| p.leader())
                .unwrap();
            let broker = metadata.brokers().iter().find(|b| b.id() == id).unwrap();
            format!("{}:{}", broker.host(), broker.port())
        })
        .await
        .unwrap()
    };

    let mut record = vec![0u8]; // attributes
    varint(&mut record, 0); // timestamp delta
    varint(&mut record, 0); // offset delta
    bytes(&mut record, key);
    bytes(&mut record, value);
    varint(&mut record, headers.len() as i64);
    for (name, value) in headers {
        bytes(&mut record, name);
        bytes(&mut record, value);
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut checked = Vec::new(); // what the batch's CRC-32C covers
    checked.extend_from_slice(&0i16.to_be_bytes()); // attributes
    checked.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    checked.extend_from_slice(&now.to_be_bytes()); // base timestamp
    checked.extend_from_slice(&now.to_be_bytes()); // max timestamp
    checked.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    checked.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    checked.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    checked.extend_from_slice(&1i32.to_be_bytes()); // records
    varint(&mut checked, record.len() as i64);
    checked.extend_from_slice(&record);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&checked);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
    batch.extend_from_slice(&((4 + 1 + 4 + checked.len()) as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc.to_be_bytes());
    batch.extend_from_slice(&checked);

    let mut request = Vec::new();
    request.extend_from_slice(&0i16.to_be_bytes()); // Produce
    request.extend_from_slice(&3i16.to_be_bytes()); // version 3
    request.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    string(&mut request, "dhanman-test");
    request.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    request.extend_from_slice(&(-1i16).to_be_bytes()); // acks: all
    request.extend_from_slice(&10_000i32.to_be_bytes()); // timeout
    request.extend_from_slice(&1i32.to_be_bytes());
    string(&mut request, topic);
    request.extend_from_slice(&1i32.to_be_bytes());
    request.extend_from_slice(&partition.to_be_bytes());
    request.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    request.extend_from_slice(&batch);

    let mut stream = tokio::net::TcpStream::connect(&leader).await.unwrap();
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&request).await.unwrap();
    let size = stream.read_i32().await.unwrap();
    let mut response = vec![0u8; size as usize];
    stream.read_exact(&mut response).await.unwrap();
    // correlation id, topics (1), the topic's name, partitions (1), the partition, its error
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(
        (i32::from_be_bytes(response[..4].try_into().unwrap()), error),
        (7, 0),
        "the broker refused the record"
    );
}

/// A `UserCreated` naming a user of another organization is dead-lettered (`rejected`),
/// and the user stays as their own organization made them: it used to rewrite their
/// address and role, and with them whom that organization's approval requests go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_event_from_another_organization_is_refused_not_applied() {
    use dhanman_schemas::events::{Envelope, UserCreated};

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, ours) = api_with_org(&setup, "Our Society").await;
    let (theirs, _) = create_org(&setup, "Their Society").await;
    let _relay = setup.spawn(&["relay"]);
    let _users = setup.spawn(&["process", "users"]);
    let user = |org: Uuid, user_id: Uuid, email: &str| UserCreated {
        envelope: Envelope::new(org, "test-user", None),
        user_id,
        email: email.into(),
        name: "Meera".into(),
        role: "manager".into(),
    };
    let (meera, later) = (Uuid::now_v7(), Uuid::now_v7());
    let events = [
        user(ours, meera, "meera@ours.example"),
        user(theirs, meera, "thief@theirs.example"),
        user(ours, later, "later@ours.example"),
    ];
    let codec = setup.codec();
    let topic = setup.topic(topics::USERS);
    let mut values = Vec::new();
    for event in &events {
        values.push(codec.encode(event).await.unwrap());
    }
    produce_all(
        &producer(),
        values
            .iter()
            .map(|v| (topic.clone(), "one-key", v.as_slice())),
    )
    .await;

    db.wait_count(
        "the user after the foreign event to be applied",
        &format!("select count(*) from user_directory where user_id = '{later}'"),
        1,
        Duration::from_secs(60),
    )
    .await;
    let kept: (Uuid, String) =
        sqlx::query_as("select organization_id, email from user_directory where user_id = $1")
            .bind(meera)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kept, (ours, "meera@ours.example".to_string()));
    // Recognised by its own bytes (the topic also holds the organizations' own users,
    // published by the relay on partitions of their own keys, so its offset may vary).
    assert_refused_as_another_organizations(&setup, topics::USERS, &values[1]).await;
    db.drop_db().await;
}
