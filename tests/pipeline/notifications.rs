//! Against an SMTP server the test runs (`devpeers/src/smtp.rs`, which the demo also uses:
//! EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with switches for refused connections,
//! 4xx, 5xx per address and a held DATA reply): a month of flows (users, who accept the
//! invitation code their welcome email carries to get their keys, customers with and
//! without email, invoices, a payment, a PO approved by manager and CFO, a salary, an
//! invoice re-send, a payment reminder) sends exactly the expected messages, subjects and
//! bodies, with the delivery log's Message-IDs; `GET /v1/notifications` filters, scopes and
//! 422s, and is 403 for a manager and a CFO; the first admin's welcome has no code, and
//! once sent no code is left in the database (the notifier's rows deleted, the log's copies
//! blanked), nor after a dead-lettered welcome; a replay of every topic (offsets to 0, every
//! customer's address changed) plans and sends nothing, the delivery log being the
//! notifier's gate; a SIGKILL while the server holds DATA sends
//! each message once after restart; a SIGTERM while it holds DATA waits for the answer,
//! records the message as sent and exits 0; an outage (refused, then 4xx) delivers
//! everything once; a 5xx address is dead-lettered at the first attempt (with its DLQ
//! record) while the others arrive; the events the notifier acts on leave no gate row but
//! are applied by their deliveries, and those it sends nothing for (an invoice's own event,
//! a submitted order) are applied by neither

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Days, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;
use dhanman_devpeers::smtp::SmtpSink;

const FROM: &str = "Lotus Towers <accounts@lotus.test>";
const WAIT: Duration = Duration::from_secs(90);

/// `dhanman up` sending through `sink`, fast retries, plus `extra`.
fn up(setup: &Setup, sink: &SmtpSink, extra: &[(&str, &str)]) -> Proc {
    let url = sink.url();
    let mut env = vec![
        ("SMTP_URL", url.as_str()),
        ("DHANMAN_MAIL_FROM", FROM),
        ("DHANMAN_SMTP_BACKOFF_MS", "100"),
        ("DHANMAN_SMTP_BACKOFF_MAX_MS", "400"),
        ("DHANMAN_SMTP_MAX_ATTEMPTS", "1000"),
        ("DHANMAN_REMINDER_TICK_MS", "200"),
    ];
    env.extend_from_slice(extra);
    setup.spawn_with_env(&["up"], &env)
}

/// Creates a user: the administrator's answer holds an invitation, no key.
async fn user(admin: &Api, email: &str, name: &str, role: &str) -> Uuid {
    let r = admin
        .post(
            "/v1/users",
            json!({"email": email, "name": name, "role": role}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.get("api_key").is_none(), "{}", r.body);
    assert!(
        r.body["invitation"]["invitation_id"].is_string(),
        "{}",
        r.body
    );
    r.body["user_id"].as_str().unwrap().parse().unwrap()
}

/// The invitation code the welcome email to `email` carries, as the invited person reads it.
async fn invitation_from_mail(sink: &SmtpSink, email: &str) -> String {
    eventually(&format!("the welcome email to {email}"), WAIT, || async {
        sink.messages()
            .iter()
            .filter(|m| m.to.iter().any(|to| to == email) && m.subject().starts_with("Welcome"))
            .find_map(|m| {
                m.text()
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("dhi_"))
                    .map(str::to_string)
            })
    })
    .await
}

/// Creates a user, and, as that user, accepts the invitation their welcome email carries:
/// their key, which the administrator never saw.
async fn invited(sink: &SmtpSink, admin: &Api, email: &str, name: &str, role: &str) -> (Uuid, Api) {
    let id = user(admin, email, name, role).await;
    let token = invitation_from_mail(sink, email).await;
    let r = crate::keys::accept_invitation(&admin.base, json!({ "token": token })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user_id"], json!(id), "{}", r.body);
    (
        id,
        Api::new(&admin.base, r.body["api_key"].as_str().unwrap()),
    )
}

async fn customer(admin: &Api, name: &str, email: Option<&str>) -> Uuid {
    let r = admin
        .post("/v1/customers", json!({"name": name, "email": email}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

/// Creates an invoice issued today; returns (id, number).
async fn invoice_due(
    admin: &Api,
    customer: Uuid,
    amount: &str,
    due_in_days: u64,
) -> (Uuid, String) {
    let today = Utc::now().date_naive();
    let due = today.checked_add_days(Days::new(due_in_days)).unwrap();
    let r = admin
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "amount": amount, "issue_date": today,
                   "due_date": due, "description": "Maintenance"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["invoice_id"].as_str().unwrap().parse().unwrap(),
        r.body["invoice_number"].as_str().unwrap().to_string(),
    )
}

/// Counts of deliveries by status.
async fn statuses(db: &TestDb) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "select status, count(*) from notification_deliveries group by status",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Waits until `sent` deliveries are sent and none is pending or in flight.
async fn settled(db: &TestDb, sent: i64) -> BTreeMap<String, i64> {
    settled_with(db, sent, 0).await
}

/// Like [`settled`], with at least `dead` dead-lettered as well: a delivery whose event sits on
/// another partition may not exist yet when the others are sent.
async fn settled_with(db: &TestDb, sent: i64, dead: i64) -> BTreeMap<String, i64> {
    eventually(
        &format!("{sent} notifications sent, {dead} dead-lettered and none pending"),
        WAIT,
        || async {
            let s = statuses(db).await;
            let count = |status: &str| s.get(status).copied().unwrap_or(0);
            let open = count("pending") + count("sending");
            (count("sent") >= sent && count("dead_lettered") >= dead && open == 0).then_some(s)
        },
    )
    .await
}

/// Every message-id the sink received exactly once.
fn assert_no_duplicates(sink: &SmtpSink) {
    let mut seen = BTreeMap::new();
    for m in sink.messages() {
        *seen.entry(m.message_id()).or_insert(0) += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "sent more than once: {dup:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_flows_sends_exactly_these_emails_and_a_replay_sends_nothing() {
    let sink = SmtpSink::start().await.expect("start the SMTP sink");
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let mut pipeline = up(&setup, &sink, &[]);
    setup.wait_ready(&pipeline).await;
    let (org, admin_key) = create_org(&setup, "Lotus Towers").await;
    let admin = Api::new(&setup.base_url(), &admin_key);

    let (_, manager) = invited(&sink, &admin, "meera@lotus.test", "Meera", "manager").await;
    let (_, cfo) = invited(&sink, &admin, "farhan@lotus.test", "Farhan", "cfo").await;
    let (_, accountant) = invited(&sink, &admin, "ravi@lotus.test", "Ravi", "accountant").await;

    let asha = customer(&admin, "Asha Rao", Some("asha@resident.test")).await;
    let bala = customer(&admin, "Bala Iyer", Some("bala@resident.test")).await;
    let chitra = customer(&admin, "Chitra Das", None).await;
    // Due tomorrow: its reminder (3 days before) is already due and fires at once.
    let (asha_invoice, asha_number) = invoice_due(&admin, asha, "1500.50", 1).await;
    let (bala_invoice, bala_number) = invoice_due(&admin, bala, "2000", 30).await;
    let (chitra_invoice, _) = invoice_due(&admin, chitra, "1750", 30).await;
    let r = admin
        .post(
            "/v1/payments/manual",
            json!({"customer_id": bala, "invoice_id": bala_invoice, "amount": "2000",
                   "method": "upi", "reference": "UPI-778"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bala_payment = r.body["payment_id"].as_str().unwrap().to_string();

    // The approvals processor asks the approvers the users projection knows when the order
    // arrives: let it know them first.
    db.wait_count(
        "the users projection to know the approvers",
        &format!("select count(*) from user_directory where organization_id = '{org}'"),
        4,
        WAIT,
    )
    .await;
    let r = accountant
        .post(
            "/v1/purchase-orders",
            json!({"vendor_id": Uuid::new_v4(), "vendor_name": "Shree Lifts",
                   "items": [{"description": "Lift overhaul", "quantity": 2, "unit_price": "40000"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let po: Uuid = r.body["po_id"].as_str().unwrap().parse().unwrap();
    db.wait_count(
        "two approval requests",
        "select count(*) from notification_deliveries where template = 'approval_request'",
        2,
        WAIT,
    )
    .await;
    for approver in [&manager, &cfo] {
        let r = approver
            .post(&format!("/v1/purchase-orders/{po}/approve"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    let r = admin
        .post(
            "/v1/salaries",
            json!({"employee_id": Uuid::new_v4(), "employee_name": "Gopal", "period": "2026-11",
                   "amount": "18000", "employee_email": "gopal@staff.test"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin
        .post(
            "/v1/salaries",
            json!({"employee_id": Uuid::new_v4(), "employee_name": "Hari", "period": "2026-11",
                   "amount": "1", "employee_email": "not an address"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["field"], "employee_email", "{}", r.body);

    // A copy of Asha's invoice asked for through the API: a command of its own, so a
    // delivery of its own; a template that does not exist, an unknown invoice and a
    // customer without an address are refused, naming what is wrong.
    let due = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap();
    let r = admin
        .post(
            &format!("/v1/invoices/{asha_invoice}/email"),
            json!({"template": "letterhead"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["field"], "template", "{}", r.body);
    let r = admin
        .post(&format!("/v1/invoices/{}/email", Uuid::new_v4()), json!({}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin
        .post(&format!("/v1/invoices/{chitra_invoice}/email"), json!({}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["field"], "invoice_id", "{}", r.body);
    let r = admin
        .post(&format!("/v1/invoices/{asha_invoice}/email"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["recipient"], "asha@resident.test", "{}", r.body);
    assert_eq!(r.body["template"], "invoice_copy", "{}", r.body);
    // A copy of Bala's receipt; an unknown payment is 404, a bad body names its field.
    let r = admin
        .post(&format!("/v1/payments/{bala_payment}/receipt"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["recipient"], "bala@resident.test", "{}", r.body);
    let r = admin
        .post(
            &format!("/v1/payments/{}/receipt", Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin
        .post(
            &format!("/v1/payments/{bala_payment}/receipt"),
            json!({"to": "x"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["field"], "to", "{}", r.body);

    let welcome = "Welcome to Lotus Towers on Dhanman".to_string();
    let asha_subject = format!("Invoice {asha_number} from Lotus Towers: INR 1,500.50 due {due}");
    let bala_due = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(30))
        .unwrap();
    let mut expected: Vec<(String, String)> = vec![
        ("admin@society.invalid".into(), welcome.clone()),
        ("meera@lotus.test".into(), welcome.clone()),
        ("farhan@lotus.test".into(), welcome.clone()),
        ("ravi@lotus.test".into(), welcome.clone()),
        ("asha@resident.test".into(), asha_subject.clone()),
        ("asha@resident.test".into(), asha_subject.clone()),
        (
            "asha@resident.test".into(),
            format!("Reminder: invoice {asha_number} for INR 1,500.50 is due {due}"),
        ),
        (
            "bala@resident.test".into(),
            format!("Invoice {bala_number} from Lotus Towers: INR 2,000.00 due {bala_due}"),
        ),
        (
            "bala@resident.test".into(),
            "Payment received: INR 2,000.00".into(),
        ),
        (
            "bala@resident.test".into(),
            "Payment received: INR 2,000.00".into(),
        ),
        (
            "meera@lotus.test".into(),
            "Approval needed: purchase order for INR 80,000.00".into(),
        ),
        (
            "farhan@lotus.test".into(),
            "Approval needed: purchase order for INR 80,000.00".into(),
        ),
        (
            "ravi@lotus.test".into(),
            "Your purchase order for INR 80,000.00 was approved".into(),
        ),
        (
            "gopal@staff.test".into(),
            "Payslip for 2026-11: INR 18,000.00".into(),
        ),
    ];
    expected.sort();
    let sent = i64::try_from(expected.len()).unwrap();
    let final_statuses = settled(&db, sent).await;
    assert_eq!(
        final_statuses,
        BTreeMap::from([("sent".to_string(), sent), ("skipped".to_string(), 1)]),
        "log: {}",
        pipeline.log_text()
    );
    let messages = sink.messages();
    let mut arrived: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m.to.join(","), m.subject()))
        .collect();
    arrived.sort();
    assert_eq!(arrived, expected);
    assert_no_duplicates(&sink);
    for m in &messages {
        assert_eq!(m.from, "accounts@lotus.test");
        // lettre quotes the display name.
        assert_eq!(
            m.header("From").as_deref(),
            Some("\"Lotus Towers\" <accounts@lotus.test>")
        );
        assert_eq!(m.header("To").as_deref(), Some(m.to[0].as_str()));
    }

    // Bodies, exactly: the invoice and the receipt, text and HTML.
    let today = Utc::now().date_naive();
    let bala_mail = messages
        .iter()
        .find(|m| m.subject().starts_with("Invoice") && m.to[0] == "bala@resident.test")
        .unwrap();
    assert_eq!(
        bala_mail.text(),
        format!(
            "Dear Bala Iyer,\n\nLotus Towers has issued invoice {bala_number}.\n\n\
             Amount: INR 2,000.00\nIssued: {today}\nDue:    {bala_due}\nFor:    Maintenance\n\n\
             Please pay by the due date.\n\nLotus Towers\n"
        )
    );
    assert!(
        bala_mail
            .html()
            .contains("<tr><th>Amount</th><td>INR 2,000.00</td></tr>"),
        "{}",
        bala_mail.html()
    );
    let receipt = messages
        .iter()
        .find(|m| m.subject().starts_with("Payment received"))
        .unwrap();
    assert_eq!(
        receipt.text(),
        format!(
            "Dear Bala Iyer,\n\nLotus Towers has received your payment of INR 2,000.00\n\
             by upi (reference UPI-778).\nIt is applied to invoice {bala_number}.\n\n\
             Thank you.\n\nLotus Towers\n"
        )
    );
    let resent = messages
        .iter()
        .filter(|m| m.subject() == asha_subject)
        .filter(|m| m.text().contains("As requested, here is invoice"))
        .count();
    assert_eq!(resent, 1, "one original invoice email and one re-send");

    // Message-IDs are the delivery log's.
    let ids: Vec<(String,)> =
        sqlx::query_as("select message_id from notification_deliveries where status = 'sent'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut ids: Vec<String> = ids.into_iter().map(|(id,)| id).collect();
    let mut got: Vec<String> = messages.iter().map(|m| m.message_id()).collect();
    ids.sort();
    got.sort();
    assert_eq!(ids, got);

    // The API: organization-scoped, filtered, 422 naming a bad status.
    let r = admin.get("/v1/notifications?status=skipped").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let skipped = r.body["notifications"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{}", r.body);
    assert_eq!(skipped[0]["recipient"], format!("customer:{chitra}"));
    assert_eq!(skipped[0]["template"], "invoice");
    assert_eq!(skipped[0]["reason"], "the customer has no email address");
    let r = admin
        .get("/v1/notifications?recipient=asha@resident.test")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["notifications"].as_array().unwrap().len(),
        3,
        "{}",
        r.body
    );
    let r = admin.get("/v1/notifications?status=lost").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["field"], "status", "{}", r.body);
    // The log names every resident's and employee's address: the bookkeepers read it, the
    // approvers do not.
    let r = accountant.get("/v1/notifications?status=skipped").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["notifications"].as_array().unwrap().len(), 1);
    for (approver, role) in [(&manager, "manager"), (&cfo, "cfo")] {
        let r = approver.get("/v1/notifications").await;
        assert_refused(&r, 403, "Authorization");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("role {role}")),
            "{}",
            r.body
        );
    }

    // Invitation codes went to the invited people only: the administrator's own welcome
    // has none (their key came from `orgs create`), and once the emails were recorded as
    // sent no code is left in the database (the notifier's rows are gone, the delivery
    // log's copies blanked).
    let admin_welcome = messages
        .iter()
        .find(|m| m.to[0] == "admin@society.invalid")
        .unwrap();
    assert!(
        !admin_welcome.text().contains("dhi_"),
        "{}",
        admin_welcome.text()
    );
    let meera_welcome = messages
        .iter()
        .find(|m| m.to[0] == "meera@lotus.test" && m.subject() == welcome)
        .unwrap();
    assert!(
        meera_welcome.text().contains("POST /v1/invitations/accept"),
        "{}",
        meera_welcome.text()
    );
    assert_eq!(db.count("select count(*) from invitation_emails").await, 0);
    assert_eq!(
        db.count(
            "select count(*) from notification_deliveries \
             where body_text like '%dhi\\_%' or body_html like '%dhi\\_%'"
        )
        .await,
        0
    );
    assert_eq!(
        db.count(
            "select count(*) from notification_deliveries where template = 'welcome' \
             and body_text like '%[removed once sent]%'"
        )
        .await,
        3
    );
    let (_, other_key) = create_org(&setup, "Cedar Heights").await;
    let other = Api::new(&setup.base_url(), &other_key);
    let r = other.get("/v1/notifications?status=sent").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["notifications"], json!([]), "{}", r.body);

    // Replay every topic for the notifier: offsets to 0, every customer's address changed.
    // Its delivery log alone must keep every email from going out again.
    settled(&db, sent + 1).await; // Cedar Heights' administrator was welcomed too.
    // The events it acted on are gated by their deliveries, with no gate row; those it
    // sends nothing for (an invoice's email is a command of its own) are applied by neither.
    let applied_as = |relation: &str, record: &str| {
        format!(
            "select count(*) from {relation} a join outbox o using (event_id)
              where a.processor = 'notifier' and o.record_name = 'dhanman.{record}'"
        )
    };
    assert!(db.count("select count(*) from invoices").await > 0);
    for record in [
        "sales.InvoiceCreated",
        "purchase.POSubmitted",
        "notification.SendInvoiceEmail",
        "sales.PaymentReceived",
    ] {
        assert_eq!(db.count(&applied_as("processed_events", record)).await, 0);
    }
    assert_eq!(
        db.count(&applied_as("applied_events", "sales.InvoiceCreated"))
            .await,
        0
    );
    assert_eq!(
        db.count(&applied_as("applied_events", "purchase.POSubmitted"))
            .await,
        0
    );
    assert!(
        db.count(&applied_as(
            "applied_events",
            "notification.SendInvoiceEmail"
        ))
        .await
            > 0
    );
    assert!(
        db.count(&applied_as("applied_events", "sales.PaymentReceived"))
            .await
            > 0
    );
    let before = sink.count();
    pipeline.kill().await;
    let group = format!("{}dhanman.notifier", setup.topic_prefix);
    let stored = format!(
        "select coalesce(sum(next_offset), 0)::bigint from consumer_offsets where group_id = '{group}'"
    );
    let read = db.count(&stored).await;
    assert!(read > 0);
    sqlx::query("update consumer_offsets set next_offset = 0 where group_id = $1")
        .bind(&group)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update customers set email = 'moved.' || email where email is not null")
        .execute(&db.pool)
        .await
        .unwrap();
    let deliveries = db
        .count("select count(*) from notification_deliveries")
        .await;
    let pipeline = up(&setup, &sink, &[]);
    setup.wait_ready(&pipeline).await;
    db.wait_count("the replay to be read", &stored, read, WAIT)
        .await;
    settled(&db, sent + 1).await;
    assert_eq!(
        db.count("select count(*) from notification_deliveries")
            .await,
        deliveries,
        "a replay planned a delivery again"
    );
    assert_eq!(sink.count(), before, "a replay sent email");
    assert_no_duplicates(&sink);
    drop(pipeline);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_server_holds_data_sends_nothing_twice() {
    let sink = SmtpSink::start().await.expect("start the SMTP sink");
    sink.set_slow_data(Duration::from_secs(600));
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let lease = [
        ("DHANMAN_SMTP_TIMEOUT_MS", "4000"),
        ("DHANMAN_SMTP_LEASE_MS", "5000"),
    ];
    let mut pipeline = up(&setup, &sink, &lease);
    setup.wait_ready(&pipeline).await;
    let (_, admin_key) = create_org(&setup, "Lotus Towers").await;
    let admin = Api::new(&setup.base_url(), &admin_key);
    for (email, name) in [("a@lotus.test", "A"), ("b@lotus.test", "B")] {
        user(&admin, email, name, "accountant").await;
    }
    // The messages' DATA has arrived and the server has not answered: kill now.
    eventually("the server to hold a message", WAIT, || async {
        (sink.held() >= 1).then_some(())
    })
    .await;
    pipeline.kill().await;
    eventually("the server to see the client gone", WAIT, || async {
        (sink.held() == 0).then_some(())
    })
    .await;
    assert_eq!(sink.count(), 0, "nothing was accepted before the kill");
    assert!(
        db.count("select count(*) from notification_deliveries where status = 'sending'")
            .await
            >= 1
    );
    sink.set_slow_data(Duration::ZERO);
    let pipeline = up(&setup, &sink, &lease);
    settled(&db, 3).await;
    assert_eq!(
        sink.count(),
        3,
        "the administrator and two users, once each"
    );
    assert_no_duplicates(&sink);
    assert!(
        db.count("select count(*) from notification_deliveries where attempts >= 2")
            .await
            >= 1,
        "a message held at the kill was sent again after its lease"
    );
    drop(pipeline);
    db.drop_db().await;
}

/// SIGTERM while the server holds a message's DATA: the sender waits for the answer and
/// records the email as sent before the process exits 0; nothing is left to resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_the_server_holds_data_finishes_that_email_and_exits_0() {
    let sink = SmtpSink::start().await.expect("start the SMTP sink");
    sink.set_slow_data(Duration::from_secs(3));
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let mut pipeline = up(&setup, &sink, &[]);
    setup.wait_ready(&pipeline).await;
    // The administrator's welcome.
    create_org(&setup, "Lotus Towers").await;
    eventually("the server to hold a message", WAIT, || async {
        (sink.held() >= 1).then_some(())
    })
    .await;
    assert_eq!(sink.count(), 0);
    let status = pipeline.stop().await;
    let log = pipeline.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("stopping: finishing the emails being sent"),
        "{log}"
    );
    assert_eq!(sink.count(), 1, "the held message was answered and kept");
    let s = statuses(&db).await;
    assert_eq!(s.get("sent"), Some(&1), "{s:?}");
    assert_eq!(s.get("sending"), None, "{s:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_delays_every_email_and_duplicates_none() {
    let sink = SmtpSink::start().await.expect("start the SMTP sink");
    sink.set_down(true);
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let pipeline = up(&setup, &sink, &[]);
    setup.wait_ready(&pipeline).await;
    let (_, admin_key) = create_org(&setup, "Lotus Towers").await;
    let admin = Api::new(&setup.base_url(), &admin_key);
    for (email, name) in [
        ("a@lotus.test", "A"),
        ("b@lotus.test", "B"),
        ("c@lotus.test", "C"),
    ] {
        user(&admin, email, name, "accountant").await;
    }
    // Refused connections, retried: wait until every message has failed three times.
    db.wait_count(
        "every message to have failed a few times",
        "select count(*) from notification_deliveries where attempts >= 3",
        4,
        WAIT,
    )
    .await;
    assert_eq!(sink.count(), 0);
    // Back, but answering 4xx to the next two transactions.
    sink.fail_next(2);
    sink.set_down(false);
    settled(&db, 4).await;
    assert_eq!(sink.count(), 4);
    assert!(sink.transactions() >= 6, "the 4xx answers were retried");
    assert_no_duplicates(&sink);
    assert_eq!(
        db.count("select count(*) from notification_deliveries where last_error is not null")
            .await,
        0,
        "a sent delivery keeps no error"
    );
    drop(pipeline);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_address_is_dead_lettered_at_once_while_others_arrive() {
    let sink = SmtpSink::start().await.expect("start the SMTP sink");
    sink.reject("gone@lotus.test");
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let pipeline = up(&setup, &sink, &[]);
    setup.wait_ready(&pipeline).await;
    let (_, admin_key) = create_org(&setup, "Lotus Towers").await;
    let admin = Api::new(&setup.base_url(), &admin_key);
    for (email, name) in [
        ("a@lotus.test", "A"),
        ("gone@lotus.test", "G"),
        ("c@lotus.test", "C"),
    ] {
        user(&admin, email, name, "accountant").await;
    }
    let s = settled_with(&db, 3, 1).await;
    assert_eq!(s.get("dead_lettered"), Some(&1), "{s:?}");
    let (attempts, reason): (i32, String) = sqlx::query_as(
        "select attempts, reason from notification_deliveries where recipient = 'gone@lotus.test'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1, "a permanent failure is not retried");
    assert!(reason.contains("550"), "{reason}");
    let mut arrived: Vec<String> = sink.messages().iter().map(|m| m.to.join(",")).collect();
    arrived.sort();
    assert_eq!(
        arrived,
        ["a@lotus.test", "admin@society.invalid", "c@lotus.test"]
    );
    // Its dead letter, through the outbox, with the DLQ headers.
    let dlq = read_topic(&setup.topic("dhanman.notification.commands.dlq"), 1).await;
    assert_eq!(dlq[0].header("dlq.error.class"), Some("permanent"));
    assert_eq!(dlq[0].header("dlq.processor"), Some("notifier"));
    assert_eq!(
        dlq[0].header("dlq.source.topic"),
        Some("dhanman.common.users")
    );
    let value: serde_json::Value = serde_json::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(value["recipient"], "gone@lotus.test");
    let r = admin.get("/v1/notifications?status=dead_lettered").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["notifications"][0]["recipient"], "gone@lotus.test");
    // The invitation that will never be delivered leaves no code behind either.
    assert_eq!(db.count("select count(*) from invitation_emails").await, 0);
    assert_eq!(
        db.count("select count(*) from notification_deliveries where body_text like '%dhi\\_%'")
            .await,
        0
    );
    drop(pipeline);
    db.drop_db().await;
}
