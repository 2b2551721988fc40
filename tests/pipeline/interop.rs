//! Confluent's official Python client (`confluent-kafka[avro]`, pinned in
//! scripts/python-requirements.txt) against our registry and topics: as a registry user
//! (`basic.auth.user.info` from `dhanman registry users add`) it registers, looks up,
//! configures and tests compatibility, and without credentials its writes are refused (401)
//! while its reads are not; its `AvroDeserializer` reads what our pipeline wrote (decimals
//! included); its `AvroSerializer` writes an `InvoiceCreated` our ledger posts.

use std::path::PathBuf;
use std::time::Duration;

use dhanman_schemas::events::{InvoiceCreated, Record};
use dhanman_schemas::topics;
use serde_json::{Value, json};
use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::*;

/// The Python interpreter with the pinned reference packages: `DHANMAN_PYTHON`, else the
/// one `scripts/python-env.sh` creates (and names).
async fn python() -> String {
    if let Ok(python) = std::env::var("DHANMAN_PYTHON") {
        return python;
    }
    let output = Command::new(repo().join("scripts/python-env.sh"))
        .output()
        .await
        .expect("run scripts/python-env.sh");
    assert!(
        output.status.success(),
        "scripts/python-env.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("DHANMAN_PYTHON="))
        .expect("DHANMAN_PYTHON= line")
        .to_string()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn client(python: &str, user_info: &str, args: &[&str]) -> Value {
    let script = repo().join("tests/interop/confluent_client.py");
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .env("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", user_info)
        .output()
        .await
        .expect("run the Confluent client");
    assert!(
        output.status.success(),
        "confluent client {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from the Confluent client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_reads_and_writes_our_topics_and_registry() {
    let python = python().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Interop Heights").await;
    let api = Api::new(&setup.base_url(), &key);
    let meera = api.customer("Meera").await;

    // Our pipeline writes an invoice (v2, with a decimal amount).
    let created = api
        .post(
            "/v1/invoices",
            json!({"customer_id": meera, "amount": "1234.56", "due_date": due_date(),
                   "period": "2026-12", "description": "December maintenance"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let invoice_id = created.body["invoice_id"].as_str().unwrap().to_string();

    // Confluent's deserializer reads it through our registry.
    let registry = setup.registry_url();
    let invoices = setup.topic(topics::INVOICES);
    let user_info = registry_user(&setup, "confluent-python").await;
    let read = client(
        &python,
        &user_info,
        &["consume", &bootstrap(), &registry, &invoices, "1"],
    )
    .await;
    let record = &read[0];
    assert_eq!(record["invoice_id"], invoice_id.as_str(), "{read}");
    assert_eq!(record["amount"], "1234.56");
    assert_eq!(record["tax_amount"], Value::Null);
    assert_eq!(record["period"], "2026-12");
    assert_eq!(record["description"], "December maintenance");
    assert_eq!(record["due_date"], due_date().to_string());
    assert_eq!(record["organization_id"], org.to_string().as_str());

    // Confluent's serializer writes an invoice that our ledger posts.
    let event_id = Uuid::now_v7();
    let theirs = json!({
        "event_id": event_id.to_string(),
        "occurred_at": "2026-12-01T10:00:00+00:00",
        "organization_id": org.to_string(),
        "correlation_id": "confluent-python",
        "causation_id": null,
        "invoice_id": Uuid::now_v7().to_string(),
        "customer_id": meera.to_string(),
        "invoice_number": "PY-1",
        "amount": "765.44",
        "currency": "INR",
        "issue_date": "2026-12-01",
        "due_date": "2026-12-15",
        "description": "written by confluent-kafka",
        "period": "2026-12",
        "tax_amount": null,
    });
    let schema_file = repo().join("schemas/avro/sales/InvoiceCreated.v2.avsc");
    let produced = client(
        &python,
        &user_info,
        &[
            "produce",
            &bootstrap(),
            &registry,
            &invoices,
            schema_file.to_str().unwrap(),
            &theirs.to_string(),
        ],
    )
    .await;
    assert_eq!(produced["delivered"], true, "{produced}");
    assert_eq!(produced["magic"], 0);
    // Same schema, same global id as the one our relay registered for this subject.
    let ours: i64 = sqlx::query_scalar(
        "select s.id::bigint from schema_registry_subject_versions v
           join schema_registry_schemas s on s.id = v.schema_id
          where v.subject = $1 order by v.version desc limit 1",
    )
    .bind(topics::subject(&invoices, InvoiceCreated::NAME))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(produced["schema_id"], ours);
    db.wait_count(
        "the ledger posting Confluent's invoice",
        &format!("select count(*) from journal_entries where source_event_id = '{event_id}'"),
        1,
        Duration::from_secs(60),
    )
    .await;
    let balance = api.get(&format!("/v1/customers/{meera}/balance")).await;
    assert_eq!(
        balance.body["balances"][0]["balance"], "2000.00",
        "{}",
        balance.body
    );

    // Registry operations through Confluent's client.
    let subject = format!("interop-{}-value", Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("dhanman-interop-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = dir.join("v1.avsc");
    let breaking = dir.join("breaking.avsc");
    std::fs::write(
        &v1,
        r#"{"type":"record","name":"Flat","namespace":"interop","fields":[{"name":"number","type":"string"},{"name":"area","type":"double","default":0.0}]}"#,
    )
    .unwrap();
    // `number` changes type: neither version can read the other.
    std::fs::write(
        &breaking,
        r#"{"type":"record","name":"Flat","namespace":"interop","fields":[{"name":"number","type":"int"},{"name":"area","type":"double","default":0.0}]}"#,
    )
    .unwrap();
    let ops = client(
        &python,
        &user_info,
        &[
            "registry",
            &registry,
            &subject,
            v1.to_str().unwrap(),
            breaking.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ops["anonymous_register"], 401, "{ops}");
    assert_eq!(ops["anonymous_config"], 401, "{ops}");
    assert_eq!(ops["anonymous_lookup"], 200, "{ops}");
    assert_eq!(ops["id"], ops["id_again"], "{ops}");
    assert_eq!(ops["lookup_id"], ops["id"]);
    assert_eq!(ops["lookup_version"], 1);
    assert_eq!(ops["schema_by_id_equal"], true);
    assert_eq!(ops["set_level"], json!({"compatibility": "FULL"}));
    assert_eq!(ops["level"], "FULL");
    assert_eq!(ops["compatible_with_itself"], true);
    assert_eq!(ops["breaking_is_compatible"], false);
    assert_eq!(ops["refused"]["http_status"], 409, "{ops}");
    assert_eq!(ops["versions"], json!([1]));
    assert!(
        ops["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == subject.as_str())
    );
    std::fs::remove_dir_all(&dir).ok();
    drop(up);
    db.drop_db().await;
}
