//! Three poison records (undecodable, invalid, an invoice of an organization that does not
//! exist yet): `dlq list` counts one per class and filters by class and time; `show`
//! decodes the orphan with its headers, and names a missing offset; after the organization
//! is created, a dry-run redrive sends nothing, `--execute` sends it once (the second run
//! sends none) with its key and header bytes as first written (not text), the ledger posts
//! it once and `list` shows it redriven

use std::time::Duration;

use dhanman_schemas::events::{InvoiceCreated, Record};
use dhanman_schemas::topics;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

fn invoice(org: Uuid, number: &str, amount: &str) -> InvoiceCreated {
    invoice_created(org, Uuid::now_v7(), number, amount)
}

async fn dlq(setup: &Setup, args: &[&str]) -> CliRun {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    dhanman(setup, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_redriven_once_after_a_fix() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // Only the ledger consumes, so each poison record has exactly one dead letter.
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let (org, _) = create_org(&setup, "Cedar Court").await;
    let codec = setup.codec();
    let missing_org = Uuid::now_v7();
    let orphan = invoice(missing_org, "NO-ORG-YET", "640.00");
    let negative = invoice(org, "NEGATIVE", "-1.00");
    let mut values = vec![b"\x01not a Confluent record".to_vec()];
    for e in [&negative, &orphan] {
        let json = serde_json::to_value(e).unwrap();
        values.push(
            codec
                .encode_json(InvoiceCreated::NAME, 2, &json)
                .await
                .unwrap(),
        );
    }
    let source = setup.topic(topics::INVOICES);
    let orphan_value = values.pop().unwrap();
    produce_all(
        &producer(),
        values.iter().map(|v| (source.clone(), "k", v.as_slice())),
    )
    .await;
    // The orphan's key and a header of its own are bytes that are not text.
    let (orphan_key, orphan_note) = (&b"k\xff\0"[..], &b"\0\xfe"[..]);
    producer()
        .send(
            FutureRecord::to(&source)
                .key(orphan_key)
                .payload(&orphan_value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "note",
                    value: Some(orphan_note),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    read_topic(&setup.topic(&topics::dlq(topics::INVOICES)), 3).await;

    // List: three dead letters, one per class; filters by class and time.
    let listed = dlq(&setup, &["list", "--json"]).await;
    assert!(listed.ok, "{}", listed.stderr);
    let report = listed.json();
    assert_eq!(report["count"], 3, "{report}");
    assert_eq!(
        report["by_class"],
        serde_json::json!({"invalid": 1, "rejected": 1, "undecodable": 1}),
        "{report}"
    );
    let rejected = dlq(&setup, &["list", "--error-class", "rejected", "--json"])
        .await
        .json();
    assert_eq!(rejected["count"], 1, "{rejected}");
    let letter = &rejected["dead_letters"][0];
    assert_eq!(letter["headers"]["dlq.processor"], "ledger", "{letter}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none = dlq(&setup, &["list", "--since", &later, "--json"])
        .await
        .json();
    assert_eq!(none["count"], 0, "{none}");
    let table = dlq(&setup, &["list", "--topic", topics::INVOICES]).await;
    assert!(
        table.stdout.contains("3 dead letter(s)"),
        "{}",
        table.stdout
    );

    // Show: the rejected one decoded, the undecodable one as bytes.
    let (partition, offset) = (
        letter["partition"].as_i64().unwrap().to_string(),
        letter["offset"].as_i64().unwrap().to_string(),
    );
    let shown = dlq(
        &setup,
        &[
            "show",
            "--topic",
            topics::INVOICES,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    )
    .await;
    assert!(shown.ok, "{}", shown.stderr);
    let shown = shown.json();
    assert_eq!(
        shown["record"]["record_name"],
        InvoiceCreated::NAME,
        "{shown}"
    );
    assert_eq!(
        shown["record"]["value"]["invoice_number"], "NO-ORG-YET",
        "{shown}"
    );
    assert_eq!(shown["headers"]["dlq.error.class"], "rejected", "{shown}");
    let missing = dlq(
        &setup,
        &[
            "show",
            "--topic",
            topics::INVOICES,
            "--partition",
            &partition,
            "--offset",
            "999",
        ],
    )
    .await;
    assert!(
        !missing.ok && missing.stderr.contains("no record"),
        "{}",
        missing.stderr
    );

    // The cause is fixed (the organization now exists); a dry run sends nothing.
    sqlx::query("insert into organizations (id, name) values ($1, 'Late Society')")
        .bind(missing_org)
        .execute(&db.pool)
        .await
        .unwrap();
    let outbox = db.count("select count(*) from outbox").await;
    let dry = dlq(&setup, &["redrive", "--error-class", "rejected"]).await;
    assert!(
        dry.ok && dry.stderr.contains("1 would be redriven"),
        "{}",
        dry.stderr
    );
    assert_eq!(db.count("select count(*) from outbox").await, outbox);
    // Executed twice: sent once, posted once.
    for expected in [1, 0] {
        let run = dlq(
            &setup,
            &[
                "redrive",
                "--error-class",
                "rejected",
                "--execute",
                "--json",
            ],
        )
        .await;
        assert!(run.ok, "{}", run.stderr);
        assert_eq!(run.json()["redriven"], expected, "{}", run.stdout);
    }
    let entry = format!(
        "select count(*) from journal_entries where reference_id = '{}'",
        orphan.invoice_id
    );
    db.wait_count(
        "the redriven invoice posted",
        &entry,
        1,
        Duration::from_secs(30),
    )
    .await;
    let after: Value = dlq(&setup, &["list", "--error-class", "rejected", "--json"])
        .await
        .json();
    assert!(
        after["dead_letters"][0]["redriven_at"].is_string(),
        "{after}"
    );
    // The redriven record is on the source topic once more, marked as such; the books hold
    // its entry once.
    let records = read_topic(&source, 4).await;
    let redriven: Vec<_> = records
        .iter()
        .filter(|r| r.header("dlq.redriven.from").is_some())
        .collect();
    assert_eq!(redriven.len(), 1);
    // Sent back as it was first written: its key and its header byte for byte.
    assert_eq!(redriven[0].key.as_deref(), Some(orphan_key));
    assert_eq!(redriven[0].header_bytes("note"), Some(orphan_note));
    assert_eq!(db.count(&entry).await, 1);
    db.drop_db().await;
}
