//! Hostile input against the running API: what an attacker sends is refused with a 4xx
//! naming the field, never a 500, never a panic, never a new metric series; the cap on
//! requests in flight is the process's, not each route's, and the embedded schema registry
//! has one of its own; a request refused before its body was read says that its connection
//! closes; records naming schema ids the registry never had leave nothing behind in the
//! codec; and a processor's statement the schema cannot run is retried, not taken for
//! poison records.

use std::collections::BTreeSet;

use crate::helpers::*;

/// The values one label takes across a metric's series in a `/metrics` text.
fn label_values(text: &str, metric: &str, label: &str) -> BTreeSet<String> {
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| {
            let start = l.find(&key)? + key.len();
            let end = l[start..].find('"')?;
            Some(l[start..start + end].to_string())
        })
        .collect()
}

/// A loop of made-up methods and paths adds no series to `/metrics`: the method label is a
/// standard method or `other`, the route a template or `unmatched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api = setup.spawn(&["api"]);
    setup.wait_ready(&api).await;
    let client = reqwest::Client::new();
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("XM{i}").as_bytes()).unwrap();
        let r = client
            .request(method, format!("{}/v1/invoices", setup.base_url()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
        let r = client
            .get(format!("{}/no/such/path/{i}", setup.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let text = client
        .get(format!("{}/metrics", setup.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let methods = label_values(&text, "dhanman_http_requests_total", "method");
    assert!(methods.contains("other"), "{methods:?}");
    assert!(methods.iter().all(|m| !m.starts_with("XM")), "{methods:?}");
    assert!(methods.len() <= 8, "{methods:?}");
    let routes = label_values(&text, "dhanman_http_requests_total", "route");
    assert!(routes.contains("unmatched"), "{routes:?}");
    assert!(routes.iter().all(|r| !r.contains("/no/such")), "{routes:?}");
    drop(api);
    db.drop_db().await;
}

/// Input that used to become a 500 or a silently changed value: a NUL byte in any text
/// field or query parameter, dates outside what a ledger holds, money as a JSON number
/// (which passes through binary floating point) or with an exponent, an email that is no
/// address, a period that is no month, a name or unit with a control character or a
/// bidirectional override, a line break in a one-line field. Each is a 422 naming the
/// field, and nothing is written; a path that is no UTF-8 text or holds a NUL is a 400 naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_422_naming_the_field_and_write_nothing() {
    use serde_json::json;

    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let api = Api::new(&base, &org_key(&db, "Hostile Society").await);
    let customer = api.customer("Nisha").await;
    let invoice = json!({"customer_id": customer, "amount": "100.00",
                         "due_date": due_date(), "issue_date": "2026-12-01"});
    let with = |body: &serde_json::Value, key: &str, value: serde_json::Value| {
        let mut body = body.clone();
        body[key] = value;
        body
    };
    let invoices_before = db.count("select count(*) from invoices").await;
    let outbox_before = db.count("select count(*) from outbox").await;
    let cases = [
        (
            "/v1/invoices",
            with(&invoice, "description", json!("rent\u{0}")),
            "description",
        ),
        (
            "/v1/invoices",
            with(&invoice, "invoice_number", json!("A\u{0}1")),
            "invoice_number",
        ),
        (
            "/v1/invoices",
            with(&invoice, "due_date", json!("-0100-01-01")),
            "due_date",
        ),
        (
            "/v1/invoices",
            with(&invoice, "issue_date", json!("+2026-12-01")),
            "issue_date",
        ),
        (
            "/v1/invoices",
            with(&invoice, "due_date", json!("1899-12-31")),
            "due_date",
        ),
        (
            "/v1/invoices",
            with(&invoice, "amount", json!(99_999_999_999_999.99)),
            "amount",
        ),
        (
            "/v1/invoices",
            with(&invoice, "amount", json!(100)),
            "amount",
        ),
        (
            "/v1/invoices",
            with(&invoice, "amount", json!("1e3")),
            "amount",
        ),
        (
            "/v1/invoices",
            with(&invoice, "amount", json!(" 100")),
            "amount",
        ),
        (
            "/v1/invoices",
            with(&invoice, "period", json!("2026-1")),
            "period",
        ),
        (
            "/v1/invoices",
            with(&invoice, "period", json!("0000-01")),
            "period",
        ),
        (
            "/v1/invoices",
            with(
                &with(&invoice, "currency", json!("JPY")),
                "amount",
                json!("100.50"),
            ),
            "amount",
        ),
        (
            "/v1/invoices",
            with(&invoice, "currency", json!("XTS")),
            "currency",
        ),
        (
            "/v1/customers",
            json!({"name": "Asha", "email": "@"}),
            "email",
        ),
        ("/v1/customers", json!({"name": "Asha\u{0}"}), "name"),
        // Text that acts rather than reads: a header's line break, a bell, an escape, a
        // bidirectional override that makes a name read backwards.
        (
            "/v1/customers",
            json!({"name": "Asha\r\nBcc: x@y.z"}),
            "name",
        ),
        ("/v1/customers", json!({"name": "Asha\u{7}"}), "name"),
        ("/v1/customers", json!({"name": "\u{202E}ahsA"}), "name"),
        (
            "/v1/customers",
            json!({"name": "Asha", "unit": "A\t101"}),
            "unit",
        ),
        (
            "/v1/users",
            json!({"email": "a@example.org", "name": "A\u{1b}[2J", "role": "admin"}),
            "name",
        ),
        (
            "/v1/invoices",
            with(&invoice, "invoice_number", json!("A-1\nB")),
            "invoice_number",
        ),
        (
            "/v1/invoices",
            with(&invoice, "description", json!("rent \u{2066}due\u{2069}")),
            "description",
        ),
        // Addresses the mail standard allows and the tables' checks do not.
        (
            "/v1/customers",
            json!({"name": "Asha", "email": "Asha <asha@example.org>"}),
            "email",
        ),
        (
            "/v1/users",
            json!({"email": "\"a b\"@example.org", "name": "A", "role": "admin"}),
            "email",
        ),
        (
            "/v1/customers",
            json!({"name": "Asha", "monthly_charge": 3500.5}),
            "monthly_charge",
        ),
    ];
    for (path, body, field) in cases {
        let reply = api.post(path, body.clone()).await;
        assert_refused(&reply, 422, field);
        assert!(reply.body.to_string().len() < 2000, "{body}");
    }
    for (query, field) in [
        ("from=-200000-01-01", "from"),
        ("to=2026-13-01", "to"),
        ("from=%00", "from"),
    ] {
        let reply = api
            .get(&format!("/v1/customers/{customer}/statement?{query}"))
            .await;
        assert_refused(&reply, 422, field);
    }
    // A forged cursor: well shaped, but with a NUL, or a time before the calendar Postgres
    // holds.
    use base64::Engine;
    let forged = |key: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_string())
    };
    let zero = uuid::Uuid::nil();
    for path in [
        format!("/v1/users?after={}", forged(json!(["a\u{0}", zero]))),
        format!(
            "/v1/jobs/runs?after={}",
            forged(json!(["-5000-01-01T00:00:00Z", zero]))
        ),
    ] {
        assert_refused(&api.get(&path).await, 422, "after");
    }
    // A path that is no text, or holds a NUL, is the API's JSON 400 naming the path (axum's
    // own answer is plain text; Postgres refuses a NUL in a parameter with an error).
    for path in [
        "/v1/accounts/%00/balance",
        "/v1/accounts/1200%00/balance",
        "/v1/invoices/%FF",
        "/v1/customers/%C3%28/statement",
    ] {
        assert_refused(&api.get(path).await, 400, "path");
    }
    assert_eq!(
        db.count("select count(*) from invoices").await,
        invoices_before
    );
    assert_eq!(db.count("select count(*) from outbox").await, outbox_before);
    // The exact decimal is kept exactly.
    let reply = api
        .post(
            "/v1/invoices",
            with(&invoice, "amount", json!("99999999999999.99")),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["amount"], "99999999999999.99", "{}", reply.body);
    // Text that only reads is kept as written: a name joined as Malayalam writes it (a
    // zero-width joiner), a description over two lines.
    let reply = api
        .post(
            "/v1/customers",
            json!({"name": "കൃഷ്ണന്\u{200D}", "unit": "B-204"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["name"], "കൃഷ്ണന്\u{200D}", "{}", reply.body);
    let reply = api
        .post(
            "/v1/invoices",
            with(&invoice, "description", json!("Maintenance\r\nDecember")),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    db.drop_db().await;
}

/// Avro that is valid but no ledger can hold (a `date` of 2^31-1 days, past chrono's
/// calendar), and Avro whose string length claims 256 MiB (past the datum's end; under the
/// Avro library's own 512 MiB default, over the pipeline's 16 MiB cap): each is
/// dead-lettered as undecodable. The forged length comes first, so it is the first record
/// of its writer schema the processors see: it is read by the datum reader every later
/// record of that schema goes through, and its reason names the length past the datum's
/// end (apache-avro's reader would name an allocation). `dhanman up` neither panics nor
/// reserves the memory, and the invoice after them on the same partition is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_avro_is_dead_lettered_and_the_pipeline_keeps_running() {
    use apache_avro::types::Value;
    use dhanman_schemas::events::{InvoiceCreated, Record};
    use dhanman_schemas::{Catalog, topics};
    use std::time::Duration;

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let mut up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Crafted Society").await;
    let codec = setup.codec();
    let schema = Catalog::global().latest(InvoiceCreated::NAME).unwrap();
    let id = codec.schema_id(schema).await.unwrap();
    let frame = |datum: Vec<u8>| {
        let mut framed = vec![0];
        framed.extend_from_slice(&id.to_be_bytes());
        framed.extend(datum);
        framed
    };
    let datum = |value: Value| {
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .unwrap()
    };
    let customer = uuid::Uuid::now_v7();
    let avro_of = |e: &InvoiceCreated| {
        dhanman_schemas::json::to_avro(&serde_json::to_value(e).unwrap(), &schema.schema, "")
            .unwrap()
    };

    // A due date 2^31-1 days after 1970.
    let mut far = avro_of(&invoice_created(org, customer, "FAR-1", "10.00"));
    if let Value::Record(fields) = &mut far {
        for (name, value) in fields.iter_mut() {
            if name == "due_date" {
                *value = Value::Date(i32::MAX);
            }
        }
    }
    let far = frame(datum(far));
    // The invoice number's length (zigzag varint 10 for "FORGE") claims 2^28 bytes.
    let plain = datum(avro_of(&invoice_created(org, customer, "FORGE", "10.00")));
    let at = plain
        .windows(6)
        .position(|w| w == b"\x0aFORGE")
        .expect("the invoice number in the datum");
    let mut forged = plain[..at].to_vec();
    forged.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x02]);
    forged.extend_from_slice(&plain[at + 1..]);
    let forged = frame(forged);
    let good = codec
        .encode(&invoice_created(org, customer, "GOOD-1", "25.00"))
        .await
        .unwrap();
    let topic = setup.topic(topics::INVOICES);
    produce_all(
        &producer(),
        [forged, far, good]
            .iter()
            .map(|v| (topic.clone(), "one-customer", v.as_slice())),
    )
    .await;

    db.wait_count(
        "the invoice after the crafted records",
        "select count(*) from journal_entries",
        1,
        Duration::from_secs(90),
    )
    .await;
    // Every group reading the topic dead-letters each crafted record once: the ledger's
    // two, read past whatever other groups' letters the relay published before them, in
    // the order of their source offsets.
    let dlq = topics::dlq(topics::INVOICES);
    let ledger_letters = format!(
        "select count(*) from outbox
          where topic = '{dlq}' and headers->>'dlq.processor' = 'ledger'"
    );
    db.wait_count(
        "the ledger's dead letters",
        &ledger_letters,
        2,
        Duration::from_secs(30),
    )
    .await;
    let through_ledgers = db
        .count(&format!(
            "select count(*) from outbox where topic = '{dlq}' and id <= (
                 select max(id) from outbox
                  where topic = '{dlq}' and headers->>'dlq.processor' = 'ledger')"
        ))
        .await;
    let mut dead: Vec<_> = read_topic(&setup.topic(&dlq), through_ledgers as usize)
        .await
        .into_iter()
        .filter(|d| d.header("dlq.processor") == Some("ledger"))
        .collect();
    dead.sort_by_key(|d| {
        d.header("dlq.source.offset")
            .and_then(|o| o.parse::<i64>().ok())
    });
    assert_eq!(dead.len(), 2, "{dead:?}");
    let classes: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.header("dlq.error.class"))
        .collect();
    assert_eq!(classes, ["undecodable", "undecodable"], "{dead:?}");
    let reasons: Vec<&str> = dead.iter().filter_map(|d| d.header("dlq.error")).collect();
    assert!(
        reasons[0].contains("length 268435456 past the datum's end"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("out of range"), "{reasons:?}");
    assert!(up.child.try_wait().unwrap().is_none(), "{}", up.log_text());
    assert!(!up.log_text().contains("panicked"), "{}", up.log_text());
    let api = Api::new(&setup.base_url(), &key);
    assert_eq!(api.get("/v1/trial-balance").await.status, 200);
    assert!(up.stop().await.success());
    db.drop_db().await;
}

/// Invoices numbered `numbers`, for one customer of `org`, produced under one key to the
/// invoices topic (made with `partitions`): the topic and the events, in order.
async fn invoices_produced(
    setup: &Setup,
    org: uuid::Uuid,
    numbers: &[&str],
    partitions: i32,
) -> (String, Vec<dhanman_schemas::events::InvoiceCreated>) {
    let codec = setup.codec();
    let topic = setup.topic(dhanman_schemas::topics::INVOICES);
    dhanman_connectors::kafka::ensure_topics(
        &bootstrap(),
        std::slice::from_ref(&topic),
        partitions,
    )
    .await
    .unwrap();
    let customer = uuid::Uuid::now_v7();
    let events: Vec<_> = numbers
        .iter()
        .map(|number| invoice_created(org, customer, number, "10.00"))
        .collect();
    let mut values = Vec::new();
    for e in &events {
        values.push(codec.encode(e).await.unwrap());
    }
    produce_all(
        &producer(),
        values
            .iter()
            .map(|v| (topic.clone(), "one-customer", v.as_slice())),
    )
    .await;
    (topic, events)
}

/// A processor run by the consumer runtime of this process, in a group of its own.
struct Running {
    stopper: dhanman_processors::Stopper,
    task: tokio::task::JoinHandle<dhanman_processors::Result<()>>,
}

impl Running {
    fn start(setup: &Setup, db: &TestDb, processor: impl dhanman_processors::Processor) -> Self {
        let mut config = dhanman_processors::RuntimeConfig::new(&bootstrap());
        config.group_id = Some(format!("{}{}", setup.topic_prefix, processor.name()));
        let stopper = dhanman_processors::Stopper::default();
        let runtime = dhanman_processors::Runtime::new(
            processor,
            db.pool.clone(),
            std::sync::Arc::new(setup.codec()),
            config,
        );
        let task = tokio::spawn(runtime.run_until(stopper.signal()));
        Running { stopper, task }
    }

    /// Stops the runtime and waits for it to end, cleanly.
    async fn stop(self) {
        self.stopper.stop();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the runtime stops")
            .unwrap()
            .unwrap();
    }
}

/// A processor for the runtime test below: it panics on one invoice (a defect some record
/// brings out), refuses another with a non-database error (`ApplyError::Poison`), and
/// records the rest. Seeing the whole batch, it has another member apply invoice `RACED`
/// meanwhile (its gate row, written on a connection of its own once the batch's
/// transaction ends), and, going one event at a time, waits for that before `A-2`.
struct Fragile {
    topic: String,
    pool: sqlx::PgPool,
    race: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl dhanman_processors::Processor for Fragile {
    fn name(&self) -> &str {
        "fragile"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[&dhanman_schemas::Event],
    ) -> Result<dhanman_processors::Applied, dhanman_processors::ApplyError> {
        let number = |e: &dhanman_schemas::Event| match e {
            dhanman_schemas::Event::InvoiceCreated(i) => i.invoice_number.clone(),
            _ => String::new(),
        };
        if let Some(raced) = events.iter().find(|e| number(e) == "RACED")
            && events.len() > 1
        {
            let (pool, id) = (self.pool.clone(), raced.envelope().event_id);
            let mut race = self.race.lock().unwrap();
            race.get_or_insert_with(|| {
                tokio::spawn(async move {
                    sqlx::query(
                        "insert into processed_events (processor, event_id, topic, partition, \"offset\")
                         values ('fragile', $1, 'elsewhere', 0, 0)",
                    )
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                })
            });
        }
        if events.len() == 1 && number(events[0]) == "A-2" {
            let race = self.race.lock().unwrap().take();
            if let Some(race) = race {
                race.await.unwrap();
            }
        }
        for event in events {
            if let dhanman_schemas::Event::InvoiceCreated(invoice) = event {
                match invoice.invoice_number.as_str() {
                    "PANIC" => panic!("a defect this invoice brings out"),
                    "REFUSE" => {
                        return Err(dhanman_processors::ApplyError::Poison(
                            "this invoice can never be applied".into(),
                        ));
                    }
                    _ => {}
                }
                sqlx::query("insert into fragile_reads (number) values ($1)")
                    .bind(&invoice.invoice_number)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(dhanman_processors::Applied::default())
    }
}

/// In the consumer runtime, a panic while applying one record and a non-database refusal
/// are that record's dead letter (class `rejected`, the reason kept), not a crash and not a
/// retry forever: the batch is begun again one event at a time, every other record of it
/// is applied once, and one that another member applied meanwhile is not applied again.
/// The batch's notification to consistency waiters names the events applied, and only
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_refusal_in_a_processor_dead_letters_that_record_alone() {
    use std::time::Duration;

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Fragile Society").await;
    sqlx::query("create table fragile_reads (number text primary key)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut notifications = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    notifications.listen("dhanman_applied").await.unwrap();
    let numbers = ["A-1", "PANIC", "A-2", "RACED", "REFUSE", "A-3"];
    let (topic, events) = invoices_produced(&setup, org, &numbers, 4).await;
    let applied: std::collections::HashSet<_> = events
        .iter()
        .filter(|e| e.invoice_number.starts_with("A-") || e.invoice_number == "RACED")
        .map(|e| e.envelope.event_id)
        .collect();
    let runtime = Running::start(
        &setup,
        &db,
        Fragile {
            topic,
            pool: db.pool.clone(),
            race: std::sync::Mutex::default(),
        },
    );
    db.wait_count(
        "the two dead letters",
        "select count(*) from outbox where raw_value is not null",
        2,
        Duration::from_secs(60),
    )
    .await;
    let read: Vec<(String,)> = sqlx::query_as("select number from fragile_reads order by number")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(read, [("A-1".into(),), ("A-2".into(),), ("A-3".into(),)]);
    let mut named = std::collections::HashSet::new();
    while !named.is_superset(&applied) {
        let heard = tokio::time::timeout(Duration::from_secs(30), notifications.recv())
            .await
            .expect("notifications naming every event applied")
            .unwrap();
        if let ("fragile", ids) = dhanman_processors::applied::heard(heard.payload()) {
            named.extend(ids.expect("a batch this small names its events"));
        }
    }
    assert_eq!(
        named, applied,
        "named: the four invoices applied, not the two dead letters"
    );
    let reasons: Vec<(String, String)> = sqlx::query_as(
        "select headers->>'dlq.error.class', headers->>'dlq.error' from outbox
          where raw_value is not null order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|(class, _)| class == "rejected"),
        "{reasons:?}"
    );
    assert!(
        reasons[0]
            .1
            .contains("applying panicked: a defect this invoice brings out"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.contains("this invoice can never be applied"),
        "{reasons:?}"
    );
    runtime.stop().await;
    drop(api);
    db.drop_db().await;
}

/// A processor whose statement the schema cannot run (its table not created yet): every
/// record would fail alike, so the batch is retried whole, nothing dead-lettered and no
/// offset moved, until the table exists; then every record is applied once.
struct Unmigrated {
    topic: String,
    /// `apply` calls with the whole batch (3 records), not one record isolated.
    whole_batches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl dhanman_processors::Processor for Unmigrated {
    fn name(&self) -> &str {
        "unmigrated"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[&dhanman_schemas::Event],
    ) -> Result<dhanman_processors::Applied, dhanman_processors::ApplyError> {
        if events.len() == 3 {
            self.whole_batches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        for event in events {
            sqlx::query("insert into unmigrated_reads (event_id) values ($1)")
                .bind(event.envelope().event_id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(dhanman_processors::Applied::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_schema_cannot_run_is_retried_not_dead_lettered() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Unmigrated Society").await;
    let (topic, _) = invoices_produced(&setup, org, &["U-1", "U-2", "U-3"], 1).await;
    let whole_batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runtime = Running::start(
        &setup,
        &db,
        Unmigrated {
            topic,
            whole_batches: whole_batches.clone(),
        },
    );
    // Before, the first refusal isolated the records one by one and dead-lettered each:
    // the whole batch was tried once.
    eventually(
        "the whole batch tried three times",
        Duration::from_secs(60),
        || {
            let tried = whole_batches.load(Ordering::SeqCst);
            async move { (tried >= 3).then_some(()) }
        },
    )
    .await;
    let dead_letters = "select count(*) from outbox where raw_value is not null";
    assert_eq!(db.count(dead_letters).await, 0);
    assert_eq!(db.count("select count(*) from consumer_offsets").await, 0);

    sqlx::query("create table unmigrated_reads (event_id uuid primary key)")
        .execute(&db.pool)
        .await
        .unwrap();
    db.wait_count(
        "the three records applied",
        "select count(*) from unmigrated_reads",
        3,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(db.count(dead_letters).await, 0);
    runtime.stop().await;
    drop(api);
    db.drop_db().await;
}

/// `?consistent_with=` with tokens no processor will ever apply cannot starve the API:
/// the waiting queries hold no database connection (the pool here has four), at most 64
/// wait at once and the rest are answered 503 with `Retry-After` at once, and meanwhile
/// another tenant's command goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswerable_consistency_waits_are_capped_and_starve_nobody() {
    use futures_util::future::join_all;
    use std::time::Duration;

    let db = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = dhanman_api::AppState::new(pool, Duration::from_secs(3));
    tokio::spawn(dhanman_api::serve(listener, state));
    let waiter = Api::new(&base, &org_key(&db, "Waiting Society").await);
    let other = Api::new(&base, &org_key(&db, "Other Society").await);

    // More than may wait, fewer than the API serves at once (none shed for load).
    let asked = dhanman_api::consistency::MAX_WAITERS + 36;
    assert!(asked < dhanman_api::MAX_IN_FLIGHT);
    let waits = (0..asked).map(|_| {
        let waiter = waiter.clone();
        async move {
            let token = uuid::Uuid::now_v7();
            waiter
                .get(&format!("/v1/trial-balance?consistent_with={token}"))
                .await
        }
    });
    let (replies, created) = tokio::join!(join_all(waits), async {
        // While they wait: another tenant's command, on the same four connections.
        tokio::time::sleep(Duration::from_millis(300)).await;
        other
            .post("/v1/customers", serde_json::json!({"name": "Not Starved"}))
            .await
    });
    assert_eq!(created.status, 201, "{}", created.body);
    let busy = replies.iter().filter(|r| r.status == 503).count();
    let waited = replies
        .iter()
        .filter(|r| r.status == 409 && r.body["error"] == "not_yet_consistent")
        .count();
    assert_eq!(
        busy + waited,
        asked,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        busy >= asked - dhanman_api::consistency::MAX_WAITERS,
        "{busy}"
    );
    assert!(waited > 0);
    for reply in replies.iter().filter(|r| r.status == 503) {
        assert_eq!(reply.body["error"], "busy", "{}", reply.body);
    }
    db.drop_db().await;
}

/// A request to `path` on `address` whose body never comes: it holds its place until the
/// request timeout.
async fn hold_open(address: &str, key: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Holds `count` requests open on `paths` in turn until a GET of `probe` is shed (503
/// `busy`, whose message it returns); a held request answered meanwhile (shed while a probe
/// held a place) is sent again, so that all of them are in flight when the probe asks.
async fn hold_until_shed(
    base: &str,
    key: &str,
    paths: &[&'static str],
    count: usize,
    probe: &str,
) -> (Vec<(&'static str, tokio::net::TcpStream)>, String) {
    use std::time::Duration;
    let address = base.trim_start_matches("http://");
    let mut held = Vec::new();
    for i in 0..count {
        let path = paths[i % paths.len()];
        held.push((path, hold_open(address, key, path).await));
    }
    let api = Api::new(base, key);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (path, stream) in held.iter_mut() {
            let mut buf = [0u8; 256];
            let pending = matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if !pending {
                *stream = hold_open(address, key, path).await;
            }
        }
        let reply = api.get(probe).await;
        if reply.status == 503 {
            assert_eq!(reply.body["error"], "busy", "{}", reply.body);
            return (
                held,
                reply.body["message"].as_str().unwrap_or("").to_string(),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{probe} was still served after 20 s with {count} requests held open: {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cap on requests in flight is the process's, not each route's: with as many
/// requests held open as the API serves at once (their bodies never come), spread over two
/// routes, a request to a third is shed at once (503 `busy`), and served again once they
/// are gone. With a limit per route, each route had its own 256 and the third was served.
/// The embedded schema registry, where the pipeline's own processes look schemas up, keeps
/// answering meanwhile: it has a budget of its own (with one budget, a processor's look-up
/// at the start of a flood of commands took a command's place and a command was shed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_on_requests_in_flight_holds_for_the_whole_process() {
    use std::time::Duration;

    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let key = org_key(&db, "Crowded Society").await;

    let (held, message) = hold_until_shed(
        &base,
        &key,
        &["/v1/customers", "/v1/invoices"],
        dhanman_api::MAX_IN_FLIGHT,
        "/v1/trial-balance",
    )
    .await;
    assert!(
        message.starts_with(&format!("{} requests", dhanman_api::MAX_IN_FLIGHT)),
        "{message}"
    );
    let probe = Api::new(&base, &key);
    let registry = probe.get("/schema-registry/subjects").await;
    assert_eq!(registry.status, 200, "{}", registry.body);

    drop(held);
    eventually(
        "the API to serve again once the held requests are gone",
        Duration::from_secs(20),
        || async { (probe.get("/v1/trial-balance").await.status == 200).then_some(()) },
    )
    .await;
    db.drop_db().await;
}

/// The embedded schema registry's own cap: with as many registry requests held open as it
/// serves at once, one more is shed (503 `busy`, naming the registry's limit) while commands
/// and reads of the API are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_has_a_cap_of_its_own() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let key = org_key(&db, "Schema-Heavy Society").await;

    let (_held, message) = hold_until_shed(
        &base,
        &key,
        &["/schema-registry/subjects/held-value"],
        dhanman_api::REGISTRY_MAX_IN_FLIGHT,
        "/schema-registry/subjects",
    )
    .await;
    assert!(
        message.starts_with(&format!(
            "{} schema registry requests",
            dhanman_api::REGISTRY_MAX_IN_FLIGHT
        )),
        "{message}"
    );
    let api = Api::new(&base, &key);
    let read = api.get("/v1/trial-balance").await;
    assert_eq!(read.status, 200, "{}", read.body);
    let created = api
        .post("/v1/customers", serde_json::json!({"name": "Still Served"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    db.drop_db().await;
}

/// One HTTP/1.1 response read from `stream`: its head (lower-cased) and body, or `None`
/// when the connection ends first.
async fn response(stream: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Some((head, body));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request refused before its body is read (wrong credentials, here, for a command and
/// for a schema) is answered with `Connection: close`, and the connection ends. The rest of
/// its body is still on the connection, so the server cannot read another request from it;
/// told nothing, a pooled client sent its next request there and saw the connection drop
/// unanswered (Confluent's registry client, after an anonymous registration, failed its
/// next call about one time in twenty). A request whose body was read keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_is_read_says_its_connection_closes() {
    use tokio::io::AsyncWriteExt;

    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let key = org_key(&db, "Keep-Alive Society").await;
    let address = base.trim_start_matches("http://");
    for (path, authorization) in [
        ("/v1/customers", "Bearer not-a-key"),
        (
            "/schema-registry/subjects/held-value/versions",
            "Basic bm9ib2R5Om5vdGhpbmc=",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // The head alone: the body has not come when the answer goes out.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {authorization}\r\n\
             Content-Type: application/json\r\nContent-Length: 20\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (head, body) = response(&mut stream).await.expect("an answer");
        assert!(head.starts_with("http/1.1 401"), "{path}: {head}\n{body}");
        assert!(head.contains("\r\nconnection: close"), "{path}: {head}");
        assert_eq!(
            response(&mut stream).await,
            None,
            "{path}: the connection ends"
        );
    }

    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = r#"{"name": "Kept Alive"}"#;
    let command = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(command.as_bytes()).await.unwrap();
    let (head, body) = response(&mut stream).await.expect("an answer");
    assert!(head.starts_with("http/1.1 201"), "{head}\n{body}");
    assert!(!head.contains("connection: close"), "{head}");
    let read = format!(
        "GET /v1/trial-balance HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    stream.write_all(read.as_bytes()).await.unwrap();
    let (head, body) = response(&mut stream)
        .await
        .expect("the same connection answers again");
    assert!(head.starts_with("http/1.1 200"), "{head}\n{body}");
    db.drop_db().await;
}

/// Records naming schema ids the registry never had leave nothing behind in the codec: the
/// same unknown id read twice is looked up twice (the decoder kept every failed lookup for
/// the life of the process, so a flood of records with random ids grew it without bound),
/// while a known schema is looked up once and then served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_keeps_no_failed_lookup() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Lookup Society").await;
    let known = setup
        .codec()
        .encode(&invoice_created(org, uuid::Uuid::now_v7(), "L-1", "5.00"))
        .await
        .unwrap();
    let mut unknown = known.clone();
    unknown[1..5].copy_from_slice(&987_654u32.to_be_bytes());
    // The registry's answers to schema look-ups by id, of one status.
    let lookups = |status: &'static str| {
        let setup = &setup;
        async move {
            let wanted = "route=\"/schema-registry/schemas/ids/{id}\"";
            let status = format!("status=\"{status}\"");
            metrics_text(setup)
                .await
                .lines()
                .filter(|l| l.starts_with("dhanman_http_requests_total{") && l.contains(wanted))
                .filter(|l| l.contains(&status))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };

    let reader = setup.codec();
    let (found_before, missing_before) = (lookups("200").await, lookups("404").await);
    for _ in 0..2 {
        assert!(reader.decode(&unknown).await.is_err());
        assert!(reader.decode(&known).await.is_ok());
    }
    assert_eq!(
        lookups("404").await - missing_before,
        2.0,
        "the unknown id, each time"
    );
    assert_eq!(
        lookups("200").await - found_before,
        1.0,
        "the known one, once"
    );
    drop(api);
    db.drop_db().await;
}
