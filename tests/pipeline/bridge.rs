//! `dhanman bridge rabbitmq` against a real RabbitMQ (`scripts/dev-services.sh`), with the
//! messages published by `tests/interop/dotnet_publisher.py` exactly as the .NET services
//! publish them. Proves: the seed's month (users, invoices, payments, an order approved by
//! a manager and the CFO, a bill against it, a salary) sent through RabbitMQ gives the same
//! books as the same month through the API; a redelivered message (same `message_id`) is
//! applied once; malformed, unknown and refused messages land in the dead-letter exchange
//! with the reason and are counted; our own events go out to `dhanman.events` as the JSON
//! .NET reads, with the event id as `message_id`, and nothing that came from RabbitMQ goes
//! back; RabbitMQ restarted mid-stream loses and doubles nothing; a correlation id longer
//! than an AMQP property holds goes out cut, and the bridge goes on; message ids alike only
//! once cut to what the table kept are still two messages, and so are ids that differ in
//! their spaces or look like the ids the bridge makes; a body that once panicked the bridge
//! is dead-lettered and the message behind it applied; a dead letter keeps no `expiration`
//! or `user_id` of its message and is persistent; a message the AMQP client cannot
//! read is dead-lettered by RabbitMQ at the queues' delivery limit while the messages around
//! it are applied, once.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// One bridge test at a time: the restart test stops RabbitMQ for all of them.
static RABBITMQ: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmq_url() -> String {
    std::env::var("RABBITMQ_URL")
        .expect("RABBITMQ_URL is not set: run the tests with `make test` (scripts/dev-services.sh)")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn python() -> String {
    if let Ok(python) = std::env::var("DHANMAN_PYTHON") {
        return python;
    }
    let output = tokio::process::Command::new(repo().join("scripts/python-env.sh"))
        .output()
        .await
        .expect("run scripts/python-env.sh");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("DHANMAN_PYTHON=").map(str::to_string))
        .expect("DHANMAN_PYTHON= line")
}

/// The names of one test's exchanges and queues.
struct Names {
    events: String,
    commands: String,
    queues: String,
    dead_letters: String,
}

impl Names {
    fn new() -> Names {
        let t = format!("t{}", &Uuid::new_v4().simple().to_string()[..10]);
        Names {
            events: format!("{t}.dhanman.events"),
            commands: format!("{t}.dhanman.commands"),
            queues: format!("{t}.bridge"),
            dead_letters: format!("{t}.bridge.dead-letters"),
        }
    }

    /// The queue the bridge's dead letters go to.
    fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.queues)
    }

    /// The bridge's inbound side alone for `org`, once it has declared its queues.
    async fn inbound_bridge(&self, setup: &Setup, org: Uuid) -> Proc {
        let inbound = [("DHANMAN_BRIDGE_DIRECTION", "inbound")];
        let bridge = self.spawn_bridge(setup, org, free_port(), &inbound);
        wait_declared(self).await;
        bridge
    }

    /// `dhanman bridge rabbitmq` for `org` on these exchanges and queues, serving its
    /// metrics on `metrics_port`, with the settings of `more` besides.
    fn spawn_bridge(
        &self,
        setup: &Setup,
        org: Uuid,
        metrics_port: u16,
        more: &[(&str, &str)],
    ) -> Proc {
        let (url, org, metrics) = (
            rabbitmq_url(),
            org.to_string(),
            format!("127.0.0.1:{metrics_port}"),
        );
        let mut env = vec![
            ("RABBITMQ_URL", url.as_str()),
            ("DHANMAN_BRIDGE_ORGANIZATION_ID", org.as_str()),
            ("DHANMAN_RABBITMQ_EVENTS_EXCHANGE", self.events.as_str()),
            ("DHANMAN_RABBITMQ_COMMANDS_EXCHANGE", self.commands.as_str()),
            ("DHANMAN_RABBITMQ_QUEUE_PREFIX", self.queues.as_str()),
            (
                "DHANMAN_RABBITMQ_DEAD_LETTER_EXCHANGE",
                self.dead_letters.as_str(),
            ),
            ("DHANMAN_METRICS_ADDR", metrics.as_str()),
        ];
        env.extend_from_slice(more);
        setup.spawn_with_env(&["bridge", "rabbitmq"], &env)
    }
}

/// A new society with one resident (a customer, created through an API of the test's own):
/// the society's id and the customer's.
async fn society_with_resident(
    setup: &Setup,
    db: &TestDb,
    society: &str,
    resident: &str,
) -> (Uuid, Uuid) {
    let (org, key) = create_org(setup, society).await;
    let api_url = serve_api(db).await;
    (org, Api::new(&api_url, &key).customer(resident).await)
}

/// A message as the .NET service sends it; `body` is the serializer's text.
fn msg(exchange: &str, type_name: &str, body: Value) -> Value {
    json!({"exchange": exchange, "type": type_name, "message_id": Uuid::new_v4().to_string(),
           "correlation_id": format!("corr-{}", Uuid::new_v4().simple()),
           "body": body.to_string()})
}

/// Publishes `messages` with the .NET-style publisher; returns how many it confirmed.
async fn publish(messages: &[Value]) -> usize {
    let file = std::env::temp_dir().join(format!("bridge-{}.jsonl", Uuid::new_v4().simple()));
    let lines: Vec<String> = messages.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = tokio::process::Command::new(python().await)
        .arg(repo().join("tests/interop/dotnet_publisher.py"))
        .arg(rabbitmq_url())
        .arg(&file)
        .output()
        .await
        .expect("run the publisher");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "publisher: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The bridge's queues exist once it has declared them; the publisher may start then.
async fn wait_declared(names: &Names) {
    eventually(
        "the bridge to declare its queues",
        Duration::from_secs(60),
        || async {
            let conn = lapin::Connection::connect(&rabbitmq_url(), Default::default())
                .await
                .ok()?;
            let channel = conn.create_channel().await.ok()?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let found = channel
                .queue_declare(
                    format!("{}.events", names.queues).as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await
                .is_ok();
            let _ = conn.close(200, "".into()).await;
            found.then_some(())
        },
    )
    .await
}

/// The messages ready in `queue` (a passive declare).
async fn queue_depth(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    let _ = conn.close(200, "".into()).await;
    depth
}

/// A queue of the test's own bound to `exchange`, to see what is published there.
async fn observe(exchange: &str) -> (lapin::Connection, lapin::Consumer) {
    let queue = format!("{exchange}.observer");
    consume(&queue, Some(exchange)).await
}

/// Consumes `queue` (declared, and bound to `exchange` if one is named).
async fn consume(queue: &str, exchange: Option<&str>) -> (lapin::Connection, lapin::Consumer) {
    let conn = lapin::Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    if let Some(exchange) = exchange {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let consumer = channel
        .basic_consume(
            queue.into(),
            "observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, consumer)
}

async fn next_message(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("a message within 60 s")
        .expect("the consumer is open")
        .expect("a delivery");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    delivery
}

/// The next message the bridge published (the .NET publisher's own, on the same
/// exchange, are passed over).
async fn next_from_bridge(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    loop {
        let delivery = next_message(consumer).await;
        if text_header(&delivery, "x-dhanman-origin").as_deref() == Some("dhanman-stream") {
            return delivery;
        }
    }
}

fn text_header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The organization's books: (account, debits, credits) per account.
async fn books(db: &TestDb, org: Uuid) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select account_code, debit_total::text, credit_total::text from account_balances
          where organization_id = $1 order by account_code",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn metric(port: u16, line_start: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_through_rabbitmq_keeps_the_same_books_as_through_the_api() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;

    // The month through the API.
    let (api_org, api_key) = create_org(&setup, "Lotus Towers").await;
    let admin = Api::new(&setup.base_url(), &api_key);
    let requester =
        crate::keys::invite(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    let manager = crate::keys::invite(&db, &admin, "mgr@lotus.example", "Meera", "manager").await;
    let cfo = crate::keys::invite(&db, &admin, "cfo@lotus.example", "Chitra", "cfo").await;
    let asha = admin.customer("Asha Rao").await;
    let vikram = admin.customer("Vikram Shah").await;
    // The consistency tokens of what the ledger posts.
    let mut posted: Vec<Value> = Vec::new();
    let (inv1, token) = invoice(&admin, asha, "3500.00").await;
    posted.push(token.into());
    posted.push(invoice(&admin, vikram, "4200.50").await.1.into());
    let r = admin
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": inv1, "amount": "3500.00", "method": "upi"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    posted.push(r.body["consistency_token"].clone());
    let vendor = Uuid::new_v4();
    let items = json!([{"description": "Lift overhaul", "quantity": 1, "unit_price": "60000.00"}]);
    let r = requester
        .api
        .post(
            "/v1/purchase-orders",
            json!({"vendor_id": vendor, "vendor_name": "Shree Lifts", "items": items}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let po = r.body["po_id"].as_str().unwrap().to_string();
    for approver in [&manager, &cfo] {
        let r = approver
            .api
            .post(&format!("/v1/purchase-orders/{po}/approve"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] == "approved" {
            posted.push(r.body["consistency_token"].clone());
        }
    }
    let r = admin
        .post(
            "/v1/bills",
            json!({"vendor_id": vendor, "po_id": po, "amount": "60000.00",
                                  "description": "Lift overhaul", "due_date": "2026-12-20"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    posted.push(r.body["consistency_token"].clone());
    let r = admin
        .post(
            "/v1/salaries",
            json!({"employee_id": Uuid::new_v4(), "employee_name": "Ravi",
                                     "period": "2026-12", "amount": "18000.00"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    posted.push(r.body["consistency_token"].clone());
    let r = admin
        .post(
            "/v1/users",
            json!({"email": "sec@lotus.example", "name": "Sunil", "role": "admin"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // The same month from the .NET services, through RabbitMQ.
    let (org, key) = create_org(&setup, "Cedar Heights").await;
    let bridged_admin = Api::new(&setup.base_url(), &key);
    let names = Names::new();
    let metrics_port = free_port();
    let bridge = names.spawn_bridge(&setup, org, metrics_port, &[]);
    wait_declared(&names).await;
    let (_observer, mut observed) = observe(&names.events).await;

    // Residents exist before their invoices (customers are not among the .NET events).
    let asha = bridged_admin.customer("Asha Rao").await;
    let vikram = bridged_admin.customer("Vikram Shah").await;
    let (req_id, mgr_id, cfo_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (inv1, inv2, po_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ev = names.events.as_str();
    let user = |id: Uuid, email: &str, name: &str, role: &str| {
        msg(
            ev,
            "UserCreatedEvent",
            json!({"UserId": id, "Email": email, "Name": name, "Role": role}),
        )
    };
    let first_invoice = msg(
        ev,
        "InvoiceCreatedEvent",
        json!({"InvoiceId": inv1, "CustomerId": asha, "Amount": 3500.00,
               "DueDate": format!("{}T00:00:00", due_date()), "CreatedAt": "2026-12-01T10:15:00+05:30"}),
    );
    let mut month = vec![
        user(req_id, "acc@cedar.example", "Asha", "Accountant"),
        user(mgr_id, "mgr@cedar.example", "Meera", "Manager"),
        user(cfo_id, "cfo@cedar.example", "Chitra", "CFO"),
        first_invoice.clone(),
        msg(
            ev,
            "InvoiceCreatedEvent",
            json!({"InvoiceId": inv2, "CustomerId": vikram,
            "Amount": 4200.50, "DueDate": due_date(), "CreatedAt": "2026-12-01T00:00:00Z"}),
        ),
        msg(
            ev,
            "PaymentReceivedEvent",
            json!({"PaymentId": Uuid::new_v4(), "InvoiceId": inv1,
            "Amount": 3500.00, "PaymentMethod": "upi"}),
        ),
        msg(
            ev,
            "POSubmittedEvent",
            json!({"PurchaseOrderId": po_id, "VendorId": vendor,
            "VendorName": "Shree Lifts", "RequestedBy": req_id,
            "Items": [{"Description": "Lift overhaul", "Quantity": 1, "UnitPrice": 60000.00}]}),
        ),
        msg(
            ev,
            "POApprovedEvent",
            json!({"PurchaseOrderId": po_id, "ApprovedBy": mgr_id}),
        ),
        msg(
            ev,
            "POApprovedEvent",
            json!({"PurchaseOrderId": po_id, "ApprovedBy": cfo_id}),
        ),
        msg(
            ev,
            "BillCreatedEvent",
            json!({"BillId": Uuid::new_v4(), "VendorId": vendor,
            "PurchaseOrderId": po_id, "Amount": 60000.00, "Description": "Lift overhaul",
            "DueDate": "2026-12-20T00:00:00"}),
        ),
        msg(
            ev,
            "SalaryPostedEvent",
            json!({"SalaryId": Uuid::new_v4(), "EmployeeId": Uuid::new_v4(),
            "EmployeeName": "Ravi", "Period": "2026-12", "Amount": 18000.00}),
        ),
        user(Uuid::new_v4(), "sec@cedar.example", "Sunil", "Admin"),
    ];
    // The first invoice redelivered: the same message id again.
    month.push(first_invoice);
    // Hostile and unmappable messages.
    let poison = [
        json!({"exchange": ev, "type": "InvoiceCreatedEvent", "message_id": "bad-json", "body": "{not json"}),
        msg(
            ev,
            "InvoiceDeletedEvent",
            json!({"InvoiceId": Uuid::new_v4()}),
        ),
        msg(
            ev,
            "InvoiceCreatedEvent",
            json!({"InvoiceId": Uuid::new_v4(), "CustomerId": asha,
            "Amount": -5.00, "DueDate": due_date(), "CreatedAt": "2026-12-01"}),
        ),
        msg(
            ev,
            "InvoiceCreatedEvent",
            json!({"InvoiceId": Uuid::new_v4(), "CustomerId": Uuid::new_v4(),
            "Amount": 10.00, "DueDate": due_date(), "CreatedAt": "2026-12-01"}),
        ),
    ];
    month.extend(poison.iter().cloned());
    assert_eq!(publish(&month).await, month.len());

    // Applied once each: 12 distinct events, the duplicate not again.
    db.wait_count(
        "the bridged month to be applied",
        &format!("select count(*) from rabbitmq_inbound where organization_id = '{org}'"),
        12,
        Duration::from_secs(60),
    )
    .await;
    // The command has a queue of its own, so it may overtake the events: it is sent once
    // the invoice it names is there, as the .NET service sends it after the invoice.
    let command = vec![
        json!({"exchange": names.commands, "routing_key": "notification.commands",
               "type": "SendInvoiceEmailCommand", "message_id": Uuid::new_v4().to_string(),
               "body": json!({"InvoiceId": inv2, "CustomerId": vikram, "EmailTemplate": "InvoiceEmail"}).to_string()}),
    ];
    assert_eq!(publish(&command).await, 1);
    db.wait_count(
        "the command to be applied",
        &format!("select count(*) from rabbitmq_inbound where organization_id = '{org}'"),
        13,
        Duration::from_secs(60),
    )
    .await;
    // The bridge's own dead-letter queue keeps them.
    let (_dl_conn, mut dead) = consume(&names.dead_letter_queue(), None).await;
    let mut reasons = Vec::new();
    for _ in 0..poison.len() {
        let letter = next_message(&mut dead).await;
        reasons.push((
            text_header(&letter, "dlq.error.class").unwrap(),
            text_header(&letter, "dlq.error").unwrap(),
            letter
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
        ));
    }
    reasons.sort();
    let classes: Vec<&str> = reasons.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        classes,
        ["malformed", "rejected", "rejected", "unknown-type"],
        "{reasons:#?}"
    );
    let all = format!("{reasons:?}");
    assert!(all.contains("greater than zero"), "{all}");
    assert!(all.contains("no such customer"), "{all}");
    assert!(all.contains("InvoiceDeletedEvent"), "{all}");
    assert!(
        reasons
            .iter()
            .any(|(_, _, id)| id.as_deref() == Some("bad-json")),
        "{all}"
    );
    eventually(
        "the dead letters to be counted",
        Duration::from_secs(30),
        || async {
            (metric(metrics_port, "dhanman_rabbitmq_dead_letters_total").await == 4.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(
            metrics_port,
            "dhanman_rabbitmq_inbound_total{outcome=\"duplicate\""
        )
        .await,
        1.0
    );

    let invoices = db
        .count(&format!(
            "select count(*) from invoices where organization_id = '{org}'"
        ))
        .await;
    assert_eq!(invoices, 2);
    let email = db
        .count(&format!(
            "select count(*) from outbox where record_name = 'dhanman.notification.SendInvoiceEmail'
               and payload->>'invoice_id' = '{inv2}'"
        ))
        .await;
    assert_eq!(email, 1);

    // The books: equal once both have posted everything (entries balance either way). The
    // API's month is the measure once the ledger has applied each of its events.
    assert_eq!(posted.len(), 6, "{posted:?}");
    for token in &posted {
        let token = token.as_str().expect("a consistency token");
        db.wait_count(
            "the API's month to be posted",
            &format!(
                "select count(*) from applied_events
                  where processor = 'ledger' and event_id = '{token}'"
            ),
            1,
            Duration::from_secs(60),
        )
        .await;
    }
    let expected = books(&db, api_org).await;
    assert!(
        expected.iter().any(|(code, _, _)| code == "2100"),
        "{expected:?}"
    );
    eventually(
        "the bridged books to equal the API's",
        Duration::from_secs(60),
        || async {
            let expected = books(&db, api_org).await;
            (books(&db, org).await == expected).then_some(())
        },
    )
    .await;

    // Outbound: an invoice made through the API of this society goes out as .NET reads it;
    // what came in from RabbitMQ does not go back (the observer sees only this one).
    let (invoice_id, token) = invoice(&bridged_admin, asha, "1250.75").await;
    // The society's first administrator, made by `dhanman orgs create`, goes out too (it is
    // this pipeline's), before or after the invoice: the two travel on different topics.
    // Nothing from RabbitMQ does.
    let mut admin_seen = false;
    let mut take = async |observed: &mut lapin::Consumer| loop {
        let d = next_from_bridge(observed).await;
        if !admin_seen
            && d.properties.kind().as_ref().map(|k| k.as_str()) == Some("UserCreatedEvent")
        {
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            assert_eq!(body["Email"], "admin@society.invalid", "{body}");
            admin_seen = true;
            continue;
        }
        return d;
    };
    let out = take(&mut observed).await;
    assert_eq!(
        out.properties.kind().as_ref().map(|k| k.as_str()),
        Some("InvoiceCreatedEvent"),
        "{}",
        String::from_utf8_lossy(&out.data)
    );
    assert_eq!(
        out.properties.message_id().as_ref().map(|m| m.to_string()),
        Some(token.clone())
    );
    assert_eq!(out.properties.delivery_mode(), &Some(2));
    let body: Value = serde_json::from_slice(&out.data).unwrap();
    assert_eq!(body["InvoiceId"], json!(invoice_id), "{body}");
    assert_eq!(body["CustomerId"], json!(asha), "{body}");
    assert!(
        String::from_utf8_lossy(&out.data).contains("\"Amount\":1250.75"),
        "{body}"
    );
    assert_eq!(
        body["DueDate"],
        format!("{}T00:00:00", due_date()),
        "{body}"
    );
    let more = tokio::time::timeout(Duration::from_secs(3), take(&mut observed)).await;
    assert!(
        more.is_err(),
        "published more than the API's events: {:?}",
        more.map(|d| String::from_utf8_lossy(&d.data).into_owned())
    );
    // Its echo came back to the bridge's own queue and was skipped, not applied.
    eventually(
        "the echo to be skipped",
        Duration::from_secs(30),
        || async {
            (metric(
                metrics_port,
                "dhanman_rabbitmq_inbound_total{outcome=\"echo\"",
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        db.count("select count(*) from rabbitmq_outbound").await,
        2,
        "only the API's events (the administrator, the invoice) are recorded as published"
    );
    drop(bridge);
    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_stream_loses_and_doubles_nothing() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (org, customer) = society_with_resident(&setup, &db, "Cedar Heights", "Asha Rao").await;
    let names = Names::new();
    let metrics_port = free_port();
    // Small batches, so the stream is still flowing when RabbitMQ goes.
    let small = [
        ("DHANMAN_RABBITMQ_PREFETCH", "20"),
        ("DHANMAN_BATCH_SIZE", "10"),
        ("DHANMAN_BRIDGE_DIRECTION", "inbound"),
    ];
    // Declared by a first run; the whole stream waits in the queue for the second.
    let mut first = names.spawn_bridge(&setup, org, metrics_port, &small);
    wait_declared(&names).await;
    first.stop().await;
    const N: i64 = 3000;
    let messages: Vec<Value> = (0..N)
        .map(|i| {
            msg(
                &names.events,
                "InvoiceCreatedEvent",
                json!({"InvoiceId": Uuid::new_v4(),
                "CustomerId": customer, "Amount": 100 + i, "DueDate": due_date(),
                "CreatedAt": "2026-12-01"}),
            )
        })
        .collect();
    assert_eq!(publish(&messages).await as i64, N);
    let bridge = names.spawn_bridge(&setup, org, metrics_port, &small);
    let applied = format!("select count(*) from rabbitmq_inbound where organization_id = '{org}'");
    db.wait_count("the stream to start", &applied, 1, Duration::from_secs(60))
        .await;
    let ctl = repo().join("scripts/rabbitmqctl.sh");
    let stopped = tokio::process::Command::new(&ctl)
        .arg("stop_app")
        .output()
        .await
        .unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let at_stop = db.count(&applied).await;
    let started = tokio::process::Command::new(&ctl)
        .arg("start_app")
        .output()
        .await
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(
        at_stop < N,
        "the stream had finished before RabbitMQ stopped: {at_stop}"
    );
    db.wait_count(
        "every message after the restart",
        &applied,
        N,
        Duration::from_secs(180),
    )
    .await;
    // Nothing doubled: one invoice per message, the amounts summing to what was sent.
    let invoices = db
        .count(&format!(
            "select count(*) from invoices where organization_id = '{org}'"
        ))
        .await;
    assert_eq!(invoices, N);
    let (sum,): (String,) =
        sqlx::query_as("select sum(amount)::text from invoices where organization_id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(sum, format!("{}.00", (0..N).map(|i| 100 + i).sum::<i64>()));
    assert!(
        bridge.log_text().contains("RabbitMQ bridge interrupted"),
        "{}",
        bridge.log_text()
    );
    drop(bridge);
    db.drop_db().await;
}

/// An event whose correlation id is longer than an AMQP property holds (255 bytes; Kafka
/// sets no limit) goes out with it cut on a character boundary, and the bridge goes on to
/// publish the next: lapin panicked on it, and the outbound side died unnoticed, again
/// after every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correlation_id_longer_than_amqp_holds_is_cut_not_a_panic() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, org) = api_with_org(&setup, "Long Story Society").await;
    let names = Names::new();
    let mut bridge = names.spawn_bridge(&setup, org, free_port(), &[]);
    wait_declared(&names).await;
    let (_observer, mut observed) = observe(&names.events).await;

    // 254 ASCII bytes, then a two-byte character across the 255th: cut before it.
    let long = format!("{}é{}", "c".repeat(254), "x".repeat(100));
    let mut first = invoice_created(org, Uuid::now_v7(), "LONG-1", "10.00");
    first.envelope.correlation_id = long.clone();
    let second = invoice_created(org, Uuid::now_v7(), "LONG-2", "20.00");
    let (codec, topic) = (
        setup.codec(),
        setup.topic(dhanman_schemas::topics::INVOICES),
    );
    for invoice in [&first, &second] {
        let value = codec.encode(invoice).await.unwrap();
        produce(&producer(), &topic, "one-customer", &value).await;
    }

    for (invoice, correlation_id) in [(&first, &long[..254]), (&second, "test-LONG-2")] {
        let delivery = next_from_bridge(&mut observed).await;
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(invoice.envelope.event_id.to_string().as_str())
        );
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(correlation_id)
        );
    }
    assert!(
        matches!(bridge.child.try_wait(), Ok(None)),
        "the bridge exited: {}",
        bridge.log_text()
    );
    bridge.stop().await;
    db.drop_db().await;
}

/// Message ids that differ only past the 200th character, or only in characters that are
/// not printable ASCII, are different messages, each applied once: the bridge kept the
/// first 200 printable characters of an id, so the second of each pair was taken for the
/// first's redelivery and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_alike_once_cut_are_still_two_messages() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (org, customer) = society_with_resident(&setup, &db, "Cedar Heights", "Asha Rao").await;
    let names = Names::new();
    let _bridge = names.inbound_bridge(&setup, org).await;

    let long = "m".repeat(200);
    let ids = [
        format!("{long}-1"),
        format!("{long}-2"),
        "inv-é".to_string(),
        "inv-ü".to_string(),
    ];
    let messages: Vec<Value> = ids
        .iter()
        .map(|id| {
            let mut m = msg(
                &names.events,
                "InvoiceCreatedEvent",
                json!({"InvoiceId": Uuid::new_v4(), "CustomerId": customer, "Amount": 100,
                       "DueDate": due_date(), "CreatedAt": "2026-12-01"}),
            );
            m["message_id"] = json!(id);
            m
        })
        .collect();
    assert_eq!(publish(&messages).await, 4);
    db.wait_count(
        "every message applied",
        &format!("select count(*) from invoices where organization_id = '{org}'"),
        4,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from rabbitmq_inbound where organization_id = '{org}'"
        ))
        .await,
        4
    );
    db.drop_db().await;
}

/// Properties and bodies a .NET publisher may send, each taken as itself: a due date with a
/// multi-byte character where its date would end (it panicked the bridge, which then came
/// back to the same message at every start) is dead-lettered naming `DueDate`, and the
/// invoice published after it applied; the dead letter of a message sent with an
/// `expiration`, a `user_id` and transient delivery stays in its queue: persistent, without
/// the expiration or the user id (RabbitMQ refuses another user's id from the bridge's
/// connection), which travel in `dlq.original.*` headers; ids that differ only in
/// surrounding spaces, and an id shaped like the ones the bridge makes for ids it cannot
/// keep, are messages of their own, and an id used again for another body is dead-lettered
/// (it was dropped as a redelivery); an invoice id used again is dead-lettered naming
/// `invoice_id`, not the number it was sent with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_properties_bodies_and_ids_are_each_taken_as_themselves() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (org, customer) = society_with_resident(&setup, &db, "Birch Court", "Asha Rao").await;
    let names = Names::new();
    let bridge = names.inbound_bridge(&setup, org).await;
    let (_dl_conn, mut dead) = consume(&names.dead_letter_queue(), None).await;

    let invoice = |id: Uuid, number: &str, due: &str| {
        msg(
            &names.events,
            "InvoiceCreatedEvent",
            json!({"InvoiceId": id, "CustomerId": customer, "Amount": 100, "InvoiceNumber": number,
                   "DueDate": due, "CreatedAt": "2026-12-01"}),
        )
    };
    let due = due_date().to_string();
    let reused = Uuid::new_v4();
    let mut euro = invoice(Uuid::new_v4(), "B-EURO", "2026-12-0\u{20ac}");
    euro["expiration"] = json!("3000");
    euro["user_id"] = json!("guest");
    euro["transient"] = json!(true);
    let mut spaced = invoice(Uuid::new_v4(), "B-SPACED", &due);
    spaced["message_id"] = json!("birch-1  ");
    let mut plain = invoice(Uuid::new_v4(), "B-PLAIN", &due);
    plain["message_id"] = json!("birch-1");
    let mut again_id = invoice(Uuid::new_v4(), "B-SAME-ID", &due);
    again_id["message_id"] = json!("birch-1");
    let mut shaped = invoice(Uuid::new_v4(), "B-SHAPED", &due);
    shaped["message_id"] = json!(format!("id-sha256:{}", "0".repeat(64)));
    let messages = [
        euro,
        invoice(Uuid::new_v4(), "B-AFTER", &due),
        plain,
        spaced,
        again_id,
        shaped,
        invoice(reused, "B-FIRST", &due),
        invoice(reused, "B-AGAIN", &due),
    ];
    assert_eq!(publish(&messages).await, messages.len());

    let applied = format!("select count(*) from invoices where organization_id = '{org}'");
    db.wait_count(
        "the five good invoices",
        &applied,
        5,
        Duration::from_secs(60),
    )
    .await;
    let numbers: Vec<String> = sqlx::query_scalar(
        "select invoice_number from invoices where organization_id = $1 order by 1",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        numbers,
        ["B-AFTER", "B-FIRST", "B-PLAIN", "B-SHAPED", "B-SPACED"]
    );

    let first = next_message(&mut dead).await;
    assert!(
        text_header(&first, "dlq.error").is_some_and(|e| e.contains("DueDate")),
        "{:?}",
        first.properties
    );
    assert_eq!(first.properties.expiration(), &None);
    assert_eq!(first.properties.user_id(), &None);
    assert_eq!(first.properties.delivery_mode(), &Some(2));
    assert_eq!(
        text_header(&first, "dlq.original.expiration").as_deref(),
        Some("3000")
    );
    assert_eq!(
        text_header(&first, "dlq.original.user_id").as_deref(),
        Some("guest")
    );
    let second = next_message(&mut dead).await;
    let error = text_header(&second, "dlq.error").unwrap_or_default();
    assert!(
        error.contains("message_id birch-1 was used before"),
        "{error}"
    );
    let third = next_message(&mut dead).await;
    let error = text_header(&third, "dlq.error").unwrap_or_default();
    assert!(
        error.contains(&format!("invoice_id {reused} already exists")),
        "{error}"
    );
    assert!(
        !bridge.log_text().contains("panicked"),
        "{}",
        bridge.log_text()
    );
    db.drop_db().await;
}

/// A message whose `message_id` is not UTF-8 cannot be read by the AMQP client, which drops
/// the connection before the bridge sees the message; RabbitMQ hands it back (first, or
/// after the message the new connection was given before the old one's were returned), so
/// it held the bridge's inbound side for ever. The quorum queue counts its deliveries and
/// moves it to the dead-letter exchange at the limit; meanwhile the bridge takes one
/// message at a time, so the messages published around it are applied, each once, and none
/// of them is dead-lettered with it; once a prefetch's worth of messages (2 here) has been
/// applied one at a time (the two published after the dead letter, if not before) it takes
/// the full prefetch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_client_cannot_read_is_dead_lettered_and_the_rest_applied() {
    let _one = RABBITMQ.lock().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (org, customer) =
        society_with_resident(&setup, &db, "Unreadable Towers", "Ravi Iyer").await;
    let names = Names::new();
    let port = free_port();
    let inbound = [
        ("DHANMAN_BRIDGE_DIRECTION", "inbound"),
        ("DHANMAN_RABBITMQ_PREFETCH", "2"),
    ];
    let mut bridge = names.spawn_bridge(&setup, org, port, &inbound);
    wait_declared(&names).await;

    let invoice = |n: u32, id: Uuid| {
        msg(
            &names.events,
            "InvoiceCreatedEvent",
            json!({"InvoiceId": id, "CustomerId": customer, "Amount": 100 + n,
                   "DueDate": due_date(), "CreatedAt": "2026-12-01"}),
        )
    };
    let mut messages: Vec<Value> = (0..10).map(|n| invoice(n, Uuid::new_v4())).collect();
    let unreadable_invoice = Uuid::new_v4();
    let mut unreadable = invoice(99, unreadable_invoice);
    unreadable["message_id_hex"] = json!("696e762dfffe");
    unreadable.as_object_mut().unwrap().remove("message_id");
    messages.insert(5, unreadable);
    assert_eq!(publish(&messages).await, 11);

    db.wait_count(
        "the ten readable messages applied",
        &format!("select count(*) from invoices where organization_id = '{org}'"),
        10,
        Duration::from_secs(120),
    )
    .await;
    let dead_letters = names.dead_letter_queue();
    eventually(
        "RabbitMQ to dead-letter the unreadable message",
        Duration::from_secs(120),
        || async { (queue_depth(&dead_letters).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(queue_depth(&format!("{}.events", names.queues)).await, 0);
    assert_eq!(
        db.count(&format!(
            "select count(*) from invoices where id = '{unreadable_invoice}'"
        ))
        .await,
        0
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from rabbitmq_inbound where organization_id = '{org}'"
        ))
        .await,
        10
    );
    assert!(metric(port, "dhanman_rabbitmq_unreadable_deliveries_total").await >= 1.0);
    // A prefetch's worth more, with nothing unreadable left to drop the connection.
    let after: Vec<Value> = (10..12).map(|n| invoice(n, Uuid::new_v4())).collect();
    assert_eq!(publish(&after).await, 2);
    db.wait_count(
        "the two messages after the dead letter applied",
        &format!("select count(*) from invoices where organization_id = '{org}'"),
        12,
        Duration::from_secs(60),
    )
    .await;
    // The full prefetch's session starts once the careful one has closed its channel.
    eventually(
        "a session with the full prefetch after the careful one",
        Duration::from_secs(30),
        || {
            let log = bridge.log_text();
            async move {
                let careful = log
                    .find("prefetch=1")
                    .expect("a session one message at a time");
                log.rfind("prefetch=2")
                    .is_some_and(|full| full > careful)
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        matches!(bridge.child.try_wait(), Ok(None)),
        "the bridge exited: {}",
        bridge.log_text()
    );
    bridge.stop().await;
    db.drop_db().await;
}
