//! The outbox relay: one relay of a deployment publishes, the others wait on its lock.
//! Stopped with SIGTERM, it finishes its batch, releases the lock and exits 0, and the
//! standby publishes from where it stopped: every event reaches the topic once. An
//! announcement of the form written before the ledger stored its records is migrated to
//! exactly the record the ledger writes now (its Avro datum read back as JSON) and headers
//! published the same, and an outbox of the form that
//! marked rows published keeps exactly its unpublished rows queued; bodies kept as `jsonb`
//! before are the same JSON after the migration to `json`.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const ACTIVE: &str = "outbox relay is the active publisher";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_with_sigterm_hands_over_to_the_standby_and_publishes_nothing_twice() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let mut first = setup.spawn(&["relay"]);
    first.wait_for_log(ACTIVE, Duration::from_secs(60)).await;
    let second = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Relay Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    for _ in 0..5 {
        invoice(&api, customer, "10.00").await;
    }
    let unpublished = "select count(*) from outbox_pending";
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (db.count(unpublished).await == 0).then_some(())
    })
    .await;
    assert!(
        !second.log_text().contains(ACTIVE),
        "the standby published while the first relay held the lock: {}",
        second.log_text()
    );

    let status = first.stop().await;
    assert!(status.success(), "{status}: {}", first.log_text());
    second.wait_for_log(ACTIVE, Duration::from_secs(30)).await;
    let mut last = String::new();
    for _ in 0..5 {
        last = invoice(&api, customer, "10.00").await.1;
    }
    ledger_applied(&api, &last).await;
    // Ten invoices, each on the topic once, whichever relay published it.
    let probe = dhanman_connectors::kafka::probe(&bootstrap()).expect("a broker probe");
    let topic = setup.topic("dhanman.sales.invoices");
    let sizes = dhanman_connectors::gauges::topic_sizes(&probe, vec![topic.clone()])
        .await
        .expect("the topic's size");
    assert_eq!(sizes, vec![(topic, 10)]);
    db.drop_db().await;
}

/// One poison outbox row (a payload its schema cannot encode) among good ones: the relay
/// parks it with the reason and publishes every other row, in order; the gauge and
/// `dhanman outbox parked` show it; fixed and unparked, it is published once. A queued id
/// whose row was deleted by hand is taken out of the queue with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_outbox_row_is_parked_and_the_rest_are_published() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn_with_env(&["api"], &[("DHANMAN_LAG_INTERVAL_MS", "200")]);
    setup.wait_ready(&api_proc).await;
    let relay = setup.spawn(&["relay"]);
    relay.wait_for_log(ACTIVE, Duration::from_secs(60)).await;
    let (_, key) = create_org(&setup, "Parking Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    invoice(&api, customer, "10.00").await;
    sqlx::query("insert into outbox_pending (id) values (0)")
        .execute(&db.pool)
        .await
        .unwrap();
    let poison = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, record_name, schema_version, payload, headers)
         values ($1, 'dhanman.sales.invoices', 'k', 'dhanman.sales.InvoiceCreated', 2,
                 '{\"not\": \"an invoice\"}', '{}')",
    )
    .bind(poison)
    .execute(&db.pool)
    .await
    .unwrap();
    invoice(&api, customer, "20.00").await;
    eventually("the good rows to go out", Duration::from_secs(60), || async {
        (db.count("select count(*) from outbox o where not exists (select from outbox_pending p where p.id = o.id) and parked_at is null and record_name = 'dhanman.sales.InvoiceCreated' and payload->>'invoice_id' is not null")
            .await
            == 2)
            .then_some(())
    })
    .await;
    let (reason,): (String,) = sqlx::query_as(
        "select parked_reason from outbox where event_id = $1 and parked_at is not null",
    )
    .bind(poison)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(reason.contains("invalid record"), "{reason}");
    relay
        .wait_for_log(
            "queued outbox ids whose rows are gone",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        db.count("select count(*) from outbox_pending where id = 0")
            .await,
        0
    );
    let topic = setup.topic("dhanman.sales.invoices");
    let probe = dhanman_connectors::kafka::probe(&bootstrap()).expect("a broker probe");
    // The topic's size as the broker reports it (a metadata answer just after the topic's
    // creation may still be "not leader": asked again until it answers).
    let size = || async {
        eventually("the topic's size", Duration::from_secs(30), || async {
            dhanman_connectors::gauges::topic_sizes(&probe, vec![topic.clone()])
                .await
                .ok()
                .map(|sizes| sizes[0].1)
        })
        .await
    };
    assert_eq!(size().await, 2);

    let listed = dhanman(&setup, &["outbox", "parked", "--json"]).await;
    assert!(listed.ok, "{}", listed.stderr);
    let rows = listed.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["event_id"], poison.to_string());
    let metrics = eventually("the parked gauge", Duration::from_secs(30), || async {
        let text = reqwest::get(format!("{}/metrics", setup.base_url()))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // One sample shows the parked row, and no other waiting.
        let lines: Vec<&str> = text.lines().collect();
        (lines.contains(&"dhanman_outbox_parked 1") && lines.contains(&"dhanman_outbox_depth 0"))
            .then_some(text.clone())
    })
    .await;
    assert!(metrics.contains("dhanman_outbox_parked 1"), "{metrics}");

    // Fixed (a valid payload) and unparked: published once, nothing parked.
    let fixed = serde_json::to_value(invoice_created(
        uuid::Uuid::now_v7(),
        customer,
        "FIXED-1",
        "30.00",
    ))
    .unwrap();
    sqlx::query("update outbox set payload = $2 where event_id = $1")
        .bind(poison)
        .bind(&fixed)
        .execute(&db.pool)
        .await
        .unwrap();
    let unparked = dhanman(&setup, &["outbox", "unpark", "--all"]).await;
    assert!(unparked.ok, "{}", unparked.stderr);
    eventually(
        "the fixed row to go out",
        Duration::from_secs(60),
        || async {
            (db.count("select (select count(*) from outbox_pending) + (select count(*) from outbox where parked_at is not null)")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(size().await, 3);
    drop(relay);
    db.drop_db().await;
}

/// The relay registers a local schema the registry does not have only with a registry
/// user's credentials (`SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO`): without them the embedded
/// registry refuses (401), the relay says why and keeps the event in the outbox; restarted
/// with them, it registers the schema and publishes the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_registers_new_subjects_only_as_a_registry_user() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    // Another installation's topics on this registry: their subjects are not registered.
    let other = format!("{}other.", setup.topic_prefix);
    let mut relay = setup.spawn_with_env(&["relay"], &[("DHANMAN_TOPIC_PREFIX", &other)]);
    let (_, key) = create_org(&setup, "Registry Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    invoice(&api, customer, "10.00").await;
    relay
        .wait_for_log(
            "refuses to register it with no credentials",
            Duration::from_secs(60),
        )
        .await;
    let pending = "select count(*) from outbox_pending";
    assert!(db.count(pending).await >= 1);
    assert_eq!(
        db.count("select count(*) from outbox where parked_at is not null")
            .await,
        0
    );
    relay.stop().await;

    let user_info = registry_user(&setup, "relay").await;
    let _relay = setup.spawn_with_env(
        &["relay"],
        &[
            ("DHANMAN_TOPIC_PREFIX", &other),
            ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", &user_info),
        ],
    );
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (db.count(pending).await == 0).then_some(())
    })
    .await;
    let subject = format!("{other}dhanman.sales.invoices-dhanman.sales.InvoiceCreated");
    let versions: serde_json::Value = reqwest::get(format!(
        "{}/subjects/{subject}/versions",
        setup.registry_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(versions, serde_json::json!([1]));
    db.drop_db().await;
}

/// An announcement written before the ledger stored its records (the row named its entry
/// and carried no record) gets, from the migration, exactly the record the ledger writes
/// now, and headers the relay publishes as it publishes the ledger's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_of_the_earlier_form_is_migrated_to_the_record_the_ledger_writes() {
    let db = TestDb::new().await;
    organization_with_two_entries(&db, "Migration Court").await;
    // The ledger keeps its record as its Avro datum; read here in its JSON form.
    type Stored = (Uuid, Option<Value>, Option<Vec<u8>>, Value);
    let stored: Vec<Stored> = sqlx::query_as(
        "select derived_from, payload, avro, headers from outbox
          where derived_from is not null order by derived_from",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let now: Vec<(Uuid, Value, Value)> = stored
        .into_iter()
        .map(|(entry, payload, avro, headers)| {
            assert_eq!(payload, None);
            (entry, announcement_json(&avro.unwrap()), headers)
        })
        .collect();
    assert_eq!(now.len(), 2);
    assert_eq!(now[0].1["entry_id"], json!(now[0].0.to_string()));
    assert_eq!(now[0].1["lines"].as_array().map(Vec::len), Some(2));
    let written = "select derived_from, payload, headers from outbox
                    where derived_from is not null order by derived_from";

    // The earlier form: no record, headers holding only the trace (and the outbox of that
    // time, which marked its rows published in a column of their own and kept its bodies
    // as `jsonb`).
    sqlx::raw_sql(
        "alter table outbox add column published_at timestamptz,
                           alter column payload type jsonb,
                           alter column headers type jsonb;
         alter table outbox drop constraint outbox_has_value;
         alter table outbox add constraint outbox_has_value check (true);
         update outbox set payload = null, avro = null,
                           headers = headers - 'event_id' - 'record_name' - 'correlation_id'
          where derived_from is not null",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    run_migration(&db, "20261204000060_ledger_announces_its_entries.sql").await;
    let migrated: Vec<(Uuid, Value, Value)> = sqlx::query_as(written)
        .persistent(false)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    // The same records; the migration's headers also spell the ids the rows now leave to
    // their columns, and the relay publishes them once either way.
    let records = |rows: &[(Uuid, Value, Value)]| -> Vec<(Uuid, Value)> {
        rows.iter().map(|(d, p, _)| (*d, p.clone())).collect()
    };
    assert_eq!(records(&migrated), records(&now));
    let published = |rows: &[(Uuid, Value, Value)]| -> Vec<Vec<(String, Vec<u8>)>> {
        rows.iter()
            .map(|(_, payload, headers)| {
                let id: Uuid = payload["event_id"].as_str().unwrap().parse().unwrap();
                dhanman_plumbing::outbox::published_headers(
                    headers,
                    Some((id, "dhanman.ledger.LedgerEntryPosted")),
                )
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_owned()))
                .collect()
            })
            .collect()
    };
    assert_eq!(published(&migrated), published(&now));
    assert_eq!(published(&now)[0].len(), 4, "{:?}", now[0].2);
    db.drop_db().await;
}

/// An organization with the ledger's entries of two invoices posted, each announced by a
/// row in the outbox; its id.
async fn organization_with_two_entries(db: &TestDb, name: &str) -> Uuid {
    use dhanman_processors::ledger;
    use dhanman_schemas::Event;

    let org = dhanman_producers::orgs::create_organization(&db.pool, name, None)
        .await
        .unwrap()
        .organization_id;
    let entries: Vec<ledger::Entry> = [("INV-1", "1250.50"), ("INV-2", "99.99")]
        .iter()
        .map(|(number, amount)| {
            let event = Event::InvoiceCreated(invoice_created(org, Uuid::now_v7(), number, amount));
            ledger::entry_for(&event).unwrap()
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    ledger::post(&mut tx, &entries).await.unwrap();
    tx.commit().await.unwrap();
    org
}

/// A `LedgerEntryPosted` datum as the ledger keeps it in the outbox, in its JSON form.
fn announcement_json(datum: &[u8]) -> Value {
    use dhanman_schemas::events::{LedgerEntryPosted, Record};
    dhanman_schemas::Catalog::global()
        .get(LedgerEntryPosted::NAME, LedgerEntryPosted::WRITE_VERSION)
        .unwrap()
        .datum_json(datum)
        .unwrap()
}

/// The ledger's announcements of `db` in the form it wrote before it kept them as their
/// Avro datum: their record as JSON in `payload`.
async fn announcements_as_json(db: &TestDb) {
    let kept: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("select id, avro from outbox where avro is not null")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!kept.is_empty());
    for (id, datum) in kept {
        sqlx::query("update outbox set payload = $2::json, avro = null where id = $1")
            .bind(id)
            .bind(announcement_json(&datum).to_string())
            .execute(&db.pool)
            .await
            .unwrap();
    }
}

/// Runs one migration's file again, on a database put back in the form before it.
async fn run_migration(db: &TestDb, file: &str) {
    let migration = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(file),
    )
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(migration))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// An outbox of the form before the queue of waiting ids (a row marked published in a
/// column of its own) is migrated with its unpublished rows queued, in order, and its
/// published and parked rows not; rows written afterwards are queued by the trigger, a row
/// written parked is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_the_earlier_form_keeps_exactly_its_unpublished_rows_queued() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "drop trigger outbox_queue on outbox;
         drop function outbox_queue();
         drop table outbox_pending;
         drop index outbox_parked;
         alter table outbox add column published_at timestamptz;
         create index outbox_pending on outbox (id) where published_at is null and parked_at is null;
         create index outbox_parked on outbox (id) where parked_at is not null and published_at is null;
         insert into outbox (event_id, topic, message_key, raw_value, headers, published_at, parked_at)
         values (gen_random_uuid(), 't', 'published', 'x', '{}', now(), null),
                (gen_random_uuid(), 't', 'waiting-1', 'x', '{}', null, null),
                (gen_random_uuid(), 't', 'parked', 'x', '{}', null, now()),
                (gen_random_uuid(), 't', 'waiting-2', 'x', '{}', null, null);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    run_migration(&db, "20261204000065_outbox_pending_apart.sql").await;
    let queued = || async {
        sqlx::query_as::<_, (String,)>(
            "select message_key from outbox_pending join outbox using (id) order by id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(key,)| key)
        .collect::<Vec<_>>()
    };
    assert_eq!(queued().await, ["waiting-1", "waiting-2"]);
    sqlx::raw_sql(
        "insert into outbox (event_id, topic, message_key, raw_value, headers, parked_at)
         values (gen_random_uuid(), 't', 'written-parked', 'x', '{}', now()),
                (gen_random_uuid(), 't', 'written', 'x', '{}', null);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(queued().await, ["waiting-1", "waiting-2", "written"]);
    db.drop_db().await;
}

/// Bodies kept as `jsonb` before (records' payloads and headers, stored responses) are the
/// same JSON after the migration that keeps them as written text (`json`), and the columns
/// keep no planner statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_kept_as_jsonb_are_the_same_json_after_the_migration_to_json() {
    let db = TestDb::new().await;
    let org = organization_with_two_entries(&db, "Body Court").await;
    announcements_as_json(&db).await;
    sqlx::raw_sql(
        "alter table outbox alter column payload type jsonb,
                            alter column headers type jsonb;
         alter table idempotency_keys alter column response_body type jsonb;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into idempotency_keys (organization_id, user_id, idempotency_key, request_hash,
                                       response_status, response_body)
         values ($1, '00000000-0000-0000-0000-000000000000', 'k', '\\x00', 201, $2)",
    )
    .bind(org)
    .bind(json!({"invoice_id": "i-1", "amount": "1250.50", "lines": [1, {"a": null}]}))
    .execute(&db.pool)
    .await
    .unwrap();
    let bodies = "select payload, headers from outbox order by id";
    let stored = "select response_body from idempotency_keys";
    // Read unprepared: a session that prepared them before the migration may not run them
    // after it ("cached plan must not change result type").
    let outbox_before: Vec<(Value, Value)> = sqlx::query_as(bodies)
        .persistent(false)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let keys_before: Vec<Value> = sqlx::query_scalar(stored)
        .persistent(false)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        outbox_before.len(),
        3,
        "the organization's event and the ledger's two announcements"
    );
    assert_eq!(
        outbox_before[1].0["lines"].as_array().map(Vec::len),
        Some(2)
    );

    run_migration(&db, "20261205000066_bodies_kept_as_json_text.sql").await;
    let outbox_after: Vec<(Value, Value)> = sqlx::query_as(bodies)
        .persistent(false)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let keys_after: Vec<Value> = sqlx::query_scalar(stored)
        .persistent(false)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(outbox_after, outbox_before);
    assert_eq!(keys_after, keys_before);
    let columns: Vec<(String, String, i16)> = sqlx::query_as(
        "select attname::text, format_type(atttypid, atttypmod), attstattarget::int2
           from pg_attribute
          where attrelid in ('outbox'::regclass, 'idempotency_keys'::regclass)
            and attname in ('payload', 'headers', 'response_body')
          order by attname",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            ("headers".to_string(), "json".to_string(), 0),
            ("payload".to_string(), "json".to_string(), 0),
            ("response_body".to_string(), "json".to_string(), 0),
        ]
    );
    db.drop_db().await;
}
