//! A payment or void consumed before its invoice means no reminder (tombstone; payments
//! summed for an invoice the command side does not know), a part payment keeps it, a
//! customer without email is skipped; two scheduler instances send one reminder per invoice
//! (40 timers made due at once); timers survive SIGKILL and restart, and a replay (offsets
//! reset to 0, `processed_events` rows deleted) re-creates no fired or cancelled timer and
//! sends nothing twice; an invoice paid on the command side while its `PaymentReceived`
//! waits unpublished is cancelled at firing, and one seen only after it was paid is never
//! scheduled; `GET /v1/reminders` (404 for another organization, 422 `invoice_id`); the
//! payments and voids of one batch, applied by one statement, end the timers as applying
//! them one batch each does (the settling event, a payment counted once however often it
//! is reported, a void before or after a full payment); a payment or void naming another
//! organization's invoice is dead-lettered and cancels nothing

use std::time::Duration;

use chrono::{DateTime, Utc};
use dhanman_schemas::events::{Envelope, InvoiceCreated, InvoiceVoided, PaymentReceived, Record};
use dhanman_schemas::{Codec, Event, topics};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);
const REMINDER: &str = "dhanman.notification.SendPaymentReminder";

fn invoice_created(org: Uuid, customer: Uuid, amount: &str) -> InvoiceCreated {
    let number = format!("INV-{}", &Uuid::now_v7().simple().to_string()[20..]);
    crate::helpers::invoice_created(org, customer, &number, amount)
}

fn paid(org: Uuid, customer: Uuid, invoice_id: Uuid, amount: &str) -> PaymentReceived {
    let mut p = payment(org, customer, 0, "reminder-test");
    p.invoice_id = Some(invoice_id);
    p.amount = amount.parse().unwrap();
    p
}

fn voided(org: Uuid, customer: Uuid, invoice_id: Uuid) -> InvoiceVoided {
    InvoiceVoided {
        envelope: Envelope::new(org, "void-test", None),
        invoice_id,
        customer_id: customer,
        amount: Decimal::new(80000, 2),
        currency: "INR".into(),
        reason: "raised twice".into(),
    }
}

async fn send<R: Record>(setup: &Setup, codec: &Codec, record: &R) -> Uuid {
    let bytes = codec.encode(record).await.expect("encode");
    produce(&producer(), &setup.topic(R::TOPIC), &record.key(), &bytes).await;
    record.envelope().event_id
}

/// The reminders processor with reminders due at once (`days_before` 30, the fixtures'
/// invoices being due in 20 days) or not before the due date (0), ticking fast.
fn scheduler(setup: &Setup, days_before: &str) -> Proc {
    setup.spawn_with_env(
        &["process", "reminders"],
        &[
            ("DHANMAN_REMINDER_DAYS_BEFORE", days_before),
            ("DHANMAN_REMINDER_TICK_MS", "50"),
        ],
    )
}

async fn wait_applied(db: &TestDb, event_ids: &[Uuid]) {
    let ids: Vec<String> = event_ids.iter().map(Uuid::to_string).collect();
    db.wait_count(
        "the reminders processor to apply the events",
        &format!(
            "select count(*) from processed_events
              where processor = 'reminders' and event_id::text in ('{}')",
            ids.join("','")
        ),
        event_ids.len() as i64,
        WAIT,
    )
    .await;
}

/// Waits for `instances` scheduler ticks that started after now and finished: every timer
/// due now has been looked at (fired, cancelled or skipped) by then.
async fn wait_full_tick(db: &TestDb, instances: i64) {
    let (now,): (DateTime<Utc>,) = sqlx::query_as("select clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    eventually("a complete scheduler tick", WAIT, || {
        let pool = db.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(
                "select count(*) from reminder_schedulers where last_tick_started_at > $1",
            )
            .bind(now)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n >= instances).then_some(())
        }
    })
    .await;
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Timer {
    state: String,
    cancel_reason: Option<String>,
    cancelled_by_event_id: Option<Uuid>,
    fired_command_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

async fn timer(db: &TestDb, invoice_id: Uuid) -> Option<Timer> {
    sqlx::query_as(
        "select state, cancel_reason, cancelled_by_event_id, fired_command_id, created_at
           from payment_reminders where invoice_id = $1",
    )
    .bind(invoice_id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

async fn wait_state(db: &TestDb, invoice_id: Uuid, state: &str) -> Timer {
    eventually(
        &format!("the timer of {invoice_id} to be {state}"),
        WAIT,
        || async move { timer(db, invoice_id).await.filter(|t| t.state == state) },
    )
    .await
}

async fn reminders_sent(db: &TestDb, invoice_id: Uuid) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "select count(*) from outbox where record_name = $1 and payload->>'invoice_id' = $2",
    )
    .bind(REMINDER)
    .bind(invoice_id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    n
}

async fn all_reminders(db: &TestDb) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from outbox where record_name = $1")
        .bind(REMINDER)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_or_void_before_the_invoice_means_no_reminder() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let (org, key) = create_org(&setup, "Lakeview Residency").await;
    let (_, other_key) = create_org(&setup, "Hillside Towers").await;
    let api = Api::new(&setup.base_url(), &key);
    let other = Api::new(&setup.base_url(), &other_key);
    let asha = api.customer("Asha").await;
    let nomail = api.post("/v1/customers", json!({"name": "Bina"})).await;
    assert_eq!(nomail.status, 201, "{}", nomail.body);
    let bina: Uuid = nomail.body["id"].as_str().unwrap().parse().unwrap();
    let _processor = scheduler(&setup, "30");
    let codec = setup.codec();

    // Invoices another service raised (this database's command side does not know them),
    // each due at once with reminders 30 days ahead.
    let paid_first = invoice_created(org, asha, "1500.00");
    let void_first = invoice_created(org, asha, "800.00");
    let partly_paid = invoice_created(org, asha, "1000.00");
    let open = invoice_created(org, asha, "1200.00");
    let no_address = invoice_created(org, bina, "300.00");

    // The payment in full, the void and a part payment are consumed first.
    let payment = paid(org, asha, paid_first.invoice_id, "1500.00");
    let void = voided(org, asha, void_first.invoice_id);
    let early = [
        send(&setup, &codec, &payment).await,
        send(&setup, &codec, &void).await,
        send(
            &setup,
            &codec,
            &paid(org, asha, partly_paid.invoice_id, "400.00"),
        )
        .await,
    ];
    wait_applied(&db, &early).await;
    // The void leaves a tombstone. The payments are noted against the invoice, whose
    // amount is not known yet.
    let tombstone = timer(&db, void_first.invoice_id).await.unwrap();
    assert_eq!(tombstone.state, "cancelled");
    assert_eq!(
        tombstone.cancelled_by_event_id,
        Some(void.envelope.event_id)
    );
    assert_eq!(timer(&db, paid_first.invoice_id).await, None);

    let mut late = Vec::new();
    for invoice in [&paid_first, &void_first, &partly_paid, &open, &no_address] {
        late.push(send(&setup, &codec, invoice).await);
    }
    wait_applied(&db, &late).await;
    wait_state(&db, open.invoice_id, "fired").await;
    wait_state(&db, partly_paid.invoice_id, "fired").await;
    wait_state(&db, no_address.invoice_id, "skipped_no_address").await;
    wait_full_tick(&db, 1).await;

    let cancelled = timer(&db, paid_first.invoice_id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled", "{cancelled:?}");
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("paid"));
    let cancelled_void = timer(&db, void_first.invoice_id).await.unwrap();
    assert_eq!(cancelled_void.state, "cancelled", "{cancelled_void:?}");
    assert_eq!(cancelled_void.cancel_reason.as_deref(), Some("voided"));
    assert_eq!(cancelled_void.created_at, tombstone.created_at);
    assert_eq!(reminders_sent(&db, paid_first.invoice_id).await, 0);
    assert_eq!(reminders_sent(&db, void_first.invoice_id).await, 0);
    assert_eq!(reminders_sent(&db, no_address.invoice_id).await, 0);
    assert_eq!(reminders_sent(&db, partly_paid.invoice_id).await, 1);
    assert_eq!(reminders_sent(&db, open.invoice_id).await, 1);
    assert_eq!(all_reminders(&db).await, 2);

    // The command: to the customer's email, the invoice's money and dates, caused by the
    // invoice event and carrying its correlation id.
    let (command_id, payload): (Uuid, Value) = sqlx::query_as(
        "select event_id, payload from outbox
          where record_name = $1 and payload->>'invoice_id' = $2",
    )
    .bind(REMINDER)
    .bind(open.invoice_id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(payload["recipient"], "r@example.org", "{payload}");
    assert_eq!(payload["amount"], "1200.00", "{payload}");
    assert_eq!(payload["currency"], "INR", "{payload}");
    assert_eq!(payload["due_date"], open.due_date.to_string(), "{payload}");
    assert_eq!(payload["customer_id"], asha.to_string());
    assert_eq!(
        payload["causation_id"],
        open.envelope.event_id.to_string(),
        "{payload}"
    );
    assert_eq!(payload["correlation_id"], open.envelope.correlation_id);

    // The API shows each timer to its organization only.
    let shown = api
        .get(&format!("/v1/reminders?invoice_id={}", open.invoice_id))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["state"], "fired");
    assert_eq!(shown.body["fired_command_id"], command_id.to_string());
    assert_eq!(shown.body["amount"], "1200.00");
    let fire_at = open.due_date - chrono::Days::new(30);
    assert_eq!(shown.body["fire_at"], format!("{fire_at}T00:00:00Z"));
    let shown = api
        .get(&format!(
            "/v1/reminders?invoice_id={}",
            paid_first.invoice_id
        ))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["state"], "cancelled");
    assert_eq!(shown.body["cancelled_by_event_id"], Value::Null);
    let foreign = other
        .get(&format!("/v1/reminders?invoice_id={}", open.invoice_id))
        .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    let unknown = api
        .get(&format!("/v1/reminders?invoice_id={}", Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    for path in ["/v1/reminders", "/v1/reminders?invoice_id=nope"] {
        let bad = api.get(path).await;
        assert_eq!(bad.status, 422, "{path}: {}", bad.body);
        assert_eq!(bad.body["field"], "invoice_id", "{path}: {}", bad.body);
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_instances_send_one_reminder_per_invoice() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let (org, key) = create_org(&setup, "Lakeview Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    // Not due before the fixture's due date: every timer waits until the test makes them all due at
    // once, so that both instances race for them.
    let _first = scheduler(&setup, "0");
    let _second = scheduler(&setup, "0");
    let codec = setup.codec();

    let invoices: Vec<InvoiceCreated> = (0..40)
        .map(|i| invoice_created(org, asha, &format!("{}.00", 100 + i)))
        .collect();
    let mut events = Vec::new();
    for invoice in &invoices {
        events.push(send(&setup, &codec, invoice).await);
    }
    wait_applied(&db, &events).await;
    db.wait_count(
        "both scheduler instances ticking",
        "select count(*) from reminder_schedulers",
        2,
        WAIT,
    )
    .await;
    assert_eq!(
        db.count("select count(*) from payment_reminders where state = 'scheduled'")
            .await,
        40
    );
    sqlx::query("update payment_reminders set fire_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    db.wait_count(
        "every timer fired",
        "select count(*) from payment_reminders where state = 'fired'",
        40,
        WAIT,
    )
    .await;
    wait_full_tick(&db, 2).await;

    assert_eq!(all_reminders(&db).await, 40);
    assert_eq!(
        db.count(&format!(
            "select count(distinct payload->>'invoice_id') from outbox where record_name = '{REMINDER}'"
        ))
        .await,
        40
    );
    // Each fired timer names the one command in the outbox.
    assert_eq!(
        db.count(&format!(
            "select count(*) from payment_reminders r
               join outbox o on o.event_id = r.fired_command_id
              where o.record_name = '{REMINDER}'"
        ))
        .await,
        40
    );
    let firers = db
        .count("select count(distinct fired_by) from payment_reminders")
        .await;
    tracing::info!(firers, "scheduler instances that fired timers");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_survive_restarts_and_a_replay_re_creates_none() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let (org, key) = create_org(&setup, "Lakeview Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let mut processor = scheduler(&setup, "0");
    let codec = setup.codec();

    let to_fire = invoice_created(org, asha, "1000.00");
    let to_void = invoice_created(org, asha, "800.00");
    let waiting = invoice_created(org, asha, "600.00");
    let mut events = Vec::new();
    for invoice in [&to_fire, &to_void, &waiting] {
        events.push(send(&setup, &codec, invoice).await);
    }
    wait_applied(&db, &events).await;
    let waiting_before = wait_state(&db, waiting.invoice_id, "scheduled").await;

    // Killed with timers pending; while it is down, one becomes due and a void arrives.
    processor.kill().await;
    sqlx::query("update payment_reminders set fire_at = now() where invoice_id = $1")
        .bind(to_fire.invoice_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let void = voided(org, asha, to_void.invoice_id);
    events.push(send(&setup, &codec, &void).await);

    let mut processor = scheduler(&setup, "0");
    let fired = wait_state(&db, to_fire.invoice_id, "fired").await;
    let cancelled = wait_state(&db, to_void.invoice_id, "cancelled").await;
    assert_eq!(
        cancelled.cancelled_by_event_id,
        Some(void.envelope.event_id)
    );
    // The fired invoice is paid later: its timer stays fired.
    events.push(
        send(
            &setup,
            &codec,
            &paid(org, asha, to_fire.invoice_id, "1000.00"),
        )
        .await,
    );
    wait_applied(&db, &events).await;
    wait_full_tick(&db, 1).await;
    assert_eq!(all_reminders(&db).await, 1);
    assert_eq!(
        timer(&db, waiting.invoice_id).await.unwrap(),
        waiting_before
    );

    // A replay from the beginning as a group that never ran: offsets back to 0 and the
    // idempotency gate emptied, so only the timer table stands between the replayed
    // events and a second reminder. Every timer is made due.
    processor.kill().await;
    let group = format!("{}dhanman.reminders", setup.topic_prefix);
    let reset = sqlx::query("update consumer_offsets set next_offset = 0 where group_id = $1")
        .bind(&group)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(reset.rows_affected() >= 1, "no stored offsets for {group}");
    sqlx::query("delete from processed_events where processor = 'reminders'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update payment_reminders set fire_at = now() where state = 'scheduled'")
        .execute(&db.pool)
        .await
        .unwrap();
    let waiting_before = timer(&db, waiting.invoice_id).await.unwrap();
    let _processor = scheduler(&setup, "0");
    wait_applied(&db, &events).await;
    wait_full_tick(&db, 1).await;

    assert_eq!(timer(&db, to_fire.invoice_id).await.unwrap(), fired);
    assert_eq!(timer(&db, to_void.invoice_id).await.unwrap(), cancelled);
    assert_eq!(reminders_sent(&db, to_fire.invoice_id).await, 1);
    assert_eq!(reminders_sent(&db, to_void.invoice_id).await, 0);
    // The one still scheduled fires now, once: it was not re-created either.
    let now_fired = wait_state(&db, waiting.invoice_id, "fired").await;
    assert_eq!(now_fired.created_at, waiting_before.created_at);
    assert_eq!(all_reminders(&db).await, 2);
    assert_eq!(db.count("select count(*) from payment_reminders").await, 3);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reminder_for_an_invoice_paid_before_its_payment_event_is_consumed() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let (_, key) = create_org(&setup, "Lakeview Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let mut relay = setup.spawn(&["relay"]);
    let _processor = scheduler(&setup, "0");

    // Scheduled (due in 20 days, reminders on the due date: not yet).
    let (first, first_token) = invoice(&api, asha, "900.00").await;
    let first_id: Uuid = first.parse().unwrap();
    let shown = api
        .get(&format!(
            "/v1/reminders?invoice_id={first}&consistent_with={first_token}"
        ))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["state"], "scheduled");

    // The relay stops: the payments below commit on the command side, and their events
    // wait in the outbox. A second invoice is created and paid in the meantime too.
    relay.kill().await;
    let pay = |invoice_id: String, amount: &'static str| {
        let api = api.clone();
        async move {
            let r = api
                .post(
                    "/v1/payments/manual",
                    json!({"invoice_id": invoice_id, "amount": amount, "method": "cash"}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            assert_eq!(r.body["invoice_status"], "paid", "{}", r.body);
            r.body["consistency_token"].as_str().unwrap().to_string()
        }
    };
    let first_payment = pay(first.clone(), "900.00").await;
    let (second, second_token) = invoice(&api, asha, "700.00").await;
    let second_id: Uuid = second.parse().unwrap();
    let second_payment = pay(second.clone(), "700.00").await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from outbox_pending join outbox using (id)
              where event_id in ('{first_payment}', '{second_token}', '{second_payment}')"
        ))
        .await,
        3,
        "the payments and the second invoice wait for the relay"
    );

    // The first timer comes due: the firing transaction finds the invoice paid.
    sqlx::query("update payment_reminders set fire_at = now() where invoice_id = $1")
        .bind(first_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let cancelled = eventually("the first timer to leave 'scheduled'", WAIT, || async {
        timer(&db, first_id)
            .await
            .filter(|t| t.state != "scheduled")
    })
    .await;
    assert_eq!(cancelled.state, "cancelled", "{cancelled:?}");
    assert_eq!(
        cancelled.cancel_reason.as_deref(),
        Some("paid (found when firing)")
    );
    assert_eq!(reminders_sent(&db, first_id).await, 0);

    // The relay returns: the payment events change nothing, and the second invoice, seen
    // after it was paid, is never scheduled.
    let _relay = setup.spawn(&["relay"]);
    let ids: Vec<Uuid> = [&first_payment, &second_token, &second_payment]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    wait_applied(&db, &ids).await;
    wait_full_tick(&db, 1).await;
    assert_eq!(timer(&db, first_id).await.unwrap(), cancelled);
    let second_timer = timer(&db, second_id).await.unwrap();
    assert_eq!(second_timer.state, "cancelled", "{second_timer:?}");
    assert_eq!(all_reminders(&db).await, 0);
    db.drop_db().await;
}

/// The payments and voids of one scenario, in the order they are applied, and the
/// invoices they name (known on the topic only, 1,000.00 each, scheduled beforehand).
struct Settlements {
    /// Paid 400 and 600 (the second payment reported twice): cancelled by the 600.
    paid_in_two: InvoiceCreated,
    /// Paid 500, reported twice: the repeat must not count, so it stays scheduled.
    paid_once_reported_twice: InvoiceCreated,
    /// Voided, then paid in full: cancelled by the void.
    voided_then_paid: InvoiceCreated,
    /// Paid in full, then voided: cancelled by the payment.
    paid_then_voided: InvoiceCreated,
    /// Named by nothing: stays scheduled.
    untouched: InvoiceCreated,
    /// Not seen yet: one paid 700 (noted, no tombstone), one voided (tombstone).
    unseen_paid: Uuid,
    unseen_voided: Uuid,
    events: Vec<Event>,
}

impl Settlements {
    fn new(org: Uuid, customer: Uuid) -> Self {
        let invoice = || invoice_created(org, customer, "1000.00");
        let (paid_in_two, paid_once_reported_twice, voided_then_paid, paid_then_voided) =
            (invoice(), invoice(), invoice(), invoice());
        let (unseen_paid, unseen_voided) = (Uuid::now_v7(), Uuid::now_v7());
        let pay =
            |invoice_id, amount| Event::PaymentReceived(paid(org, customer, invoice_id, amount));
        let void = |invoice_id| Event::InvoiceVoided(voided(org, customer, invoice_id));
        // The same payment in a second event (another report of it, not a replay).
        let again = |event: &Event| {
            let Event::PaymentReceived(p) = event else {
                unreachable!()
            };
            let mut p = p.clone();
            p.envelope = Envelope::new(org, "reported-again", None);
            Event::PaymentReceived(p)
        };
        let second = pay(paid_in_two.invoice_id, "600.00");
        let once = pay(paid_once_reported_twice.invoice_id, "500.00");
        let mut on_account = payment(org, customer, 90_000, "on-account");
        on_account.invoice_id = None;
        let events = vec![
            pay(paid_in_two.invoice_id, "400.00"),
            void(voided_then_paid.invoice_id),
            once.clone(),
            pay(paid_then_voided.invoice_id, "1000.00"),
            second.clone(),
            again(&second),
            again(&once),
            pay(voided_then_paid.invoice_id, "1000.00"),
            void(paid_then_voided.invoice_id),
            Event::PaymentReceived(on_account),
            pay(unseen_paid, "700.00"),
            void(unseen_voided),
        ];
        Settlements {
            paid_in_two,
            paid_once_reported_twice,
            voided_then_paid,
            paid_then_voided,
            untouched: invoice(),
            unseen_paid,
            unseen_voided,
            events,
        }
    }

    fn invoices(&self) -> Vec<Event> {
        [
            &self.paid_in_two,
            &self.paid_once_reported_twice,
            &self.voided_then_paid,
            &self.paid_then_voided,
            &self.untouched,
        ]
        .map(|i| Event::InvoiceCreated(i.clone()))
        .to_vec()
    }

    fn event_id(&self, at: usize) -> Option<Uuid> {
        Some(self.events[at].envelope().event_id)
    }

    /// The timers as applying the events one after the other leaves them.
    async fn check(&self, db: &TestDb) {
        let cancelled =
            |t: Option<Timer>| t.map(|t| (t.state, t.cancel_reason, t.cancelled_by_event_id));
        let by = |reason: &str, at| {
            Some((
                "cancelled".to_string(),
                Some(reason.to_string()),
                self.event_id(at),
            ))
        };
        let scheduled = Some(("scheduled".to_string(), None, None));
        assert_eq!(
            cancelled(timer(db, self.paid_in_two.invoice_id).await),
            by("paid", 4)
        );
        assert_eq!(
            cancelled(timer(db, self.paid_once_reported_twice.invoice_id).await),
            scheduled
        );
        assert_eq!(
            cancelled(timer(db, self.voided_then_paid.invoice_id).await),
            by("voided", 1)
        );
        assert_eq!(
            cancelled(timer(db, self.paid_then_voided.invoice_id).await),
            by("paid", 3)
        );
        assert_eq!(
            cancelled(timer(db, self.untouched.invoice_id).await),
            scheduled
        );
        assert_eq!(timer(db, self.unseen_paid).await, None);
        assert_eq!(
            cancelled(timer(db, self.unseen_voided).await),
            by("voided", 11)
        );
        let noted: Vec<(Uuid, Decimal, i64)> = sqlx::query_as(
            "select invoice_id, sum(amount), count(*) from payment_reminder_payments
              where invoice_id = any($1) group by invoice_id order by invoice_id",
        )
        .bind([
            self.paid_in_two.invoice_id,
            self.paid_once_reported_twice.invoice_id,
            self.unseen_paid,
        ])
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let mut expected = vec![
            (self.paid_in_two.invoice_id, Decimal::from(1000), 2),
            (
                self.paid_once_reported_twice.invoice_id,
                Decimal::from(500),
                1,
            ),
            (self.unseen_paid, Decimal::from(700), 1),
        ];
        expected.sort();
        assert_eq!(noted, expected);
    }
}

/// The processor applies a batch's payments and voids in one statement: the timers end as
/// if the events had been applied one batch each (checked against exactly that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_and_voids_in_one_batch_end_as_one_after_the_other() {
    use dhanman_processors::Processor;
    use dhanman_processors::reminders::Reminders;
    let db = TestDb::new().await;
    let processor = Reminders::new(30);
    let (org, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let mut conn = db.pool.acquire().await.unwrap();
    let apply = async |conn: &mut sqlx::PgConnection, events: &[Event]| {
        let events: Vec<&Event> = events.iter().collect();
        processor.apply(conn, &events).await.unwrap();
    };

    let together = Settlements::new(org, customer);
    apply(&mut conn, &together.invoices()).await;
    apply(&mut conn, &together.events).await;
    together.check(&db).await;

    let apart = Settlements::new(org, customer);
    apply(&mut conn, &apart.invoices()).await;
    for event in &apart.events {
        apply(&mut conn, std::slice::from_ref(event)).await;
    }
    apart.check(&db).await;
    drop(conn);
    db.drop_db().await;
}

/// An invoice belongs to one organization: a payment in full and a void that name it under
/// another organization are dead-lettered (`rejected`, "another organization") and its
/// timer stays scheduled. The processor took the organization a record named, so either
/// cancelled another society's reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_or_void_from_another_organization_cancels_no_reminder() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, ours) = api_with_org(&setup, "Our Society").await;
    let (theirs, _) = create_org(&setup, "Their Society").await;
    let _relay = setup.spawn(&["relay"]);
    let _processor = scheduler(&setup, "0");
    let codec = setup.codec();
    let customer = Uuid::now_v7();
    let invoice = invoice_created(ours, customer, "900.00");
    let created = send(&setup, &codec, &invoice).await;
    wait_applied(&db, &[created]).await;
    assert_eq!(
        timer(&db, invoice.invoice_id).await.unwrap().state,
        "scheduled"
    );

    let payment = paid(theirs, customer, invoice.invoice_id, "900.00");
    let void = voided(theirs, customer, invoice.invoice_id);
    send(&setup, &codec, &payment).await;
    send(&setup, &codec, &void).await;
    for (topic, value) in [
        (topics::PAYMENTS, codec.encode(&payment).await.unwrap()),
        (topics::INVOICES, codec.encode(&void).await.unwrap()),
    ] {
        assert_refused_as_another_organizations(&setup, topic, &value).await;
    }
    let kept = timer(&db, invoice.invoice_id).await.unwrap();
    assert_eq!(kept.state, "scheduled");
    assert_eq!(kept.cancelled_by_event_id, None);
    assert_eq!(
        db.count(&format!(
            "select count(*) from payment_reminder_payments where invoice_id = '{}'",
            invoice.invoice_id
        ))
        .await,
        0
    );
    db.drop_db().await;
}
