//! Schema evolution in the running pipeline: writers on v1 and v2 of `InvoiceCreated` share
//! one topic; the ledger (built against v2, in `dhanman up`) posts both; a processor built
//! against v1 (the consumer runtime with its reader pinned to v1) and plain consumers of
//! either version each read every record through their own reader schema.

use std::sync::Arc;
use std::time::Duration;

use dhanman_processors::{Applied, ApplyError, Processor, Runtime, RuntimeConfig};
use dhanman_schemas::events::{Envelope, InvoiceCreated, Record};
use dhanman_schemas::{Event, topics};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::helpers::*;

/// A processor built against v1 of `InvoiceCreated`: records what it read.
struct V1Reader {
    topic: String,
}

impl Processor for V1Reader {
    fn name(&self) -> &str {
        "v1-reader"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Applied, ApplyError> {
        for event in events {
            if let Event::InvoiceCreated(invoice) = event {
                sqlx::query(
                    "insert into v1_reads (invoice_id, amount, description, period, tax_amount)
                     values ($1, $2, $3, $4, $5)",
                )
                .bind(invoice.invoice_id)
                .bind(invoice.amount)
                .bind(&invoice.description)
                .bind(&invoice.period)
                .bind(invoice.tax_amount)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(Applied::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_writers_and_readers_coexist_on_one_topic() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Evolving Enclave").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Kiran").await;

    // The v1 processor, in this process, in its own group.
    sqlx::query(
        "create table v1_reads (invoice_id uuid primary key, amount numeric, description text,
                                period text, tax_amount numeric)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pinned = setup
        .codec()
        .pin_reader(InvoiceCreated::NAME, 1)
        .expect("v1 is a local schema");
    let mut config = RuntimeConfig::new(&bootstrap());
    config.group_id = Some(format!("{}v1-reader", setup.topic_prefix));
    let v1_processor = tokio::spawn(
        Runtime::new(
            V1Reader {
                topic: setup.topic(topics::INVOICES),
            },
            db.pool.clone(),
            Arc::new(pinned),
            config,
        )
        .run(),
    );

    // Alternating writers: even invoices from a v1 service, odd ones from a v2 service.
    let codec = setup.codec();
    let mut sent = Vec::new();
    let mut records = Vec::new();
    for i in 0..10i64 {
        let invoice = InvoiceCreated {
            envelope: Envelope::new(org, &format!("evolution-{i}"), None),
            invoice_id: Uuid::now_v7(),
            customer_id: customer,
            invoice_number: format!("EVO-{i}"),
            amount: Decimal::new(10_000 + i * 101, 2),
            currency: "INR".into(),
            issue_date: "2026-12-01".parse().unwrap(),
            due_date: due_date(),
            description: Some(format!("flat {i}")),
            period: Some("2026-12".into()),
            tax_amount: Some(Decimal::new(i * 7, 2)),
        };
        let version = if i % 2 == 0 { 1 } else { 2 };
        let bytes = codec
            .encode_json(
                InvoiceCreated::NAME,
                version,
                &serde_json::to_value(&invoice).unwrap(),
            )
            .await
            .unwrap();
        records.push((invoice.key(), bytes));
        sent.push((version, invoice));
    }
    let topic = setup.topic(topics::INVOICES);
    produce_all(
        &producer(),
        records
            .iter()
            .map(|(k, v)| (topic.clone(), k.as_str(), v.as_slice())),
    )
    .await;

    // Both writer versions are registered under the one subject.
    let subject = topics::subject(&topic, InvoiceCreated::NAME);
    let versions: Value = reqwest::get(format!(
        "{}/subjects/{subject}/versions",
        setup.registry_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(versions, serde_json::json!([1, 2]));

    // The ledger, built against v2, posts every invoice whatever its writer.
    db.wait_count(
        "entries for all ten invoices",
        "select count(*) from journal_entries where reference_type = 'invoice'",
        10,
        Duration::from_secs(60),
    )
    .await;
    let total: Decimal = sent.iter().map(|(_, i)| i.amount).sum();
    let posted: Decimal = sqlx::query_scalar(
        "select sum(debit) from postings where account_code = '1200' and party_id = $1",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(posted, total);

    // The v1 processor read every invoice, and none with a v2 field, whoever wrote it.
    db.wait_count(
        "the v1 processor reading all ten invoices",
        "select count(*) from v1_reads",
        10,
        Duration::from_secs(60),
    )
    .await;
    let v1_total: Decimal = sqlx::query_scalar("select sum(amount) from v1_reads")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(v1_total, total);
    assert_eq!(
        db.count(
            "select count(*) from v1_reads
              where description is not null or period is not null or tax_amount is not null"
        )
        .await,
        0
    );
    v1_processor.abort();

    // Plain consumers of either version see every record through their own schema.
    let read = read_topic(&topic, sent.len()).await;
    assert_eq!(read.len(), sent.len());
    for record in &read {
        let as_v1 = codec.decode_as(&record.payload, Some(1)).await.unwrap();
        let as_v2 = codec.decode_as(&record.payload, Some(2)).await.unwrap();
        let id: Uuid = as_v1.json["invoice_id"].as_str().unwrap().parse().unwrap();
        let (written, original) = sent
            .iter()
            .find(|(_, i)| i.invoice_id == id)
            .expect("a record we sent");
        // A v1 reader has no v2 fields, whoever wrote the record.
        for field in ["description", "period", "tax_amount"] {
            assert!(as_v1.json.get(field).is_none(), "{field} in {}", as_v1.json);
        }
        assert_eq!(as_v1.json["amount"], as_v2.json["amount"]);
        assert_eq!(
            as_v1.json["invoice_number"],
            original.invoice_number.as_str()
        );
        let from_v2: InvoiceCreated = serde_json::from_value(as_v2.json).unwrap();
        if *written == 1 {
            // A v2 reader fills the fields a v1 writer never had with their defaults.
            assert_eq!(from_v2.description, None);
            assert_eq!(from_v2.period, None);
            assert_eq!(from_v2.tax_amount, None);
        } else {
            assert_eq!(&from_v2, original);
        }
    }
    drop(up);
    db.drop_db().await;
}
