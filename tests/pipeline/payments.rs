//! The saga against a `dhanman gateway` process, the gateway's charge log compared with the
//! payments recorded: charge once, ledger posts, replay by key, 409 for a paid invoice; a
//! declined card is 402 with `PaymentFailed` and no ledger change; a crash (abort) after
//! each step, then a restart, finishes with one charge; a lost response is replayed, not
//! charged twice; a charge for an invoice voided meanwhile is refunded, across crashes
//! before and after the refund; gateway down: the breaker opens (metric, `/readyz`), calls
//! fail fast with nothing sent, then it closes and the payment goes through; the lease: a
//! retry with the same key while the gateway holds the first charge (`latency_ms`) answers
//! 503 `charging` at once, and two `dhanman api` processes recovering one saga at start-up
//! overlap, one of them leaving it to the lease holder — one charge request per saga key
//! (the gateway's `/_requests`), one payment; a charge that lands on a saga made final
//! meanwhile is refunded (`late_charge`, `late_charge_refunded`, the metric), the books
//! unchanged; an ambiguous 409 after a charge (`ambiguous_next`) is reconciled by the
//! lookup by key and completes with one charge and one payment, and the same 409 with
//! nothing charged (`busy_next`) leaves the saga `charging` until the retry completes it

use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::*;

/// `dhanman gateway` on a free port.
pub(crate) struct Gateway {
    _proc: Proc,
    base: String,
    http: reqwest::Client,
}

impl Gateway {
    pub(crate) async fn start(setup: &Setup) -> Gateway {
        let addr = format!("127.0.0.1:{}", free_port());
        let proc = setup.spawn_with_env(&["gateway"], &[("DHANMAN_GATEWAY_ADDR", &addr)]);
        let gateway = Gateway {
            _proc: proc,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        };
        let url = format!("{}/healthz", gateway.base);
        eventually("the gateway to listen", Duration::from_secs(30), || {
            let request = gateway.http.get(&url);
            async move {
                request
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        gateway
    }

    async fn control(&self, patch: Value) {
        let r = self
            .http
            .put(format!("{}/_control", self.base))
            .json(&patch)
            .send()
            .await
            .expect("PUT /_control");
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// `GET /_requests`: every `/v1` request the gateway received, whatever became of it.
    async fn requests(&self) -> Vec<Value> {
        let body: Value = self
            .http
            .get(format!("{}/_requests", self.base))
            .send()
            .await
            .expect("GET /_requests")
            .json()
            .await
            .expect("requests JSON");
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Charge requests (`POST /v1/charges`) the gateway received under `key`: replays,
    /// faults and refusals included.
    async fn charge_requests(&self, key: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == "/v1/charges")
            .filter(|r| r["idempotency_key"] == key)
            .count()
    }

    pub(crate) async fn log(&self) -> Vec<Value> {
        let body: Value = self
            .http
            .get(format!("{}/v1/log", self.base))
            .send()
            .await
            .expect("GET /v1/log")
            .json()
            .await
            .expect("log JSON");
        body["entries"].as_array().cloned().unwrap_or_default()
    }

    /// Money the gateway holds: succeeded charges less refunds.
    async fn net_charged(&self) -> (usize, Decimal) {
        let mut count = 0i64;
        let mut sum = Decimal::ZERO;
        for e in self.log().await {
            let amount: Decimal = e["amount"].as_str().unwrap().parse().unwrap();
            match (e["kind"].as_str(), e["status"].as_str()) {
                (Some("charge"), Some("succeeded")) => {
                    count += 1;
                    sum += amount;
                }
                (Some("refund"), _) => {
                    count -= 1;
                    sum -= amount;
                }
                _ => {}
            }
        }
        (
            usize::try_from(count).expect("never more refunds than charges"),
            sum,
        )
    }
}

/// What the saga recorded: payments made through the gateway (count, sum). A payment
/// recorded by hand (`/v1/payments/manual`) has no saga and moved no money there.
async fn recorded(db: &TestDb) -> (usize, Decimal) {
    let (n, sum): (i64, Decimal) = sqlx::query_as(
        "select count(*), coalesce(sum(p.amount), 0)
           from payments p join payment_sagas s on s.id = p.id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (n as usize, sum)
}

pub(crate) async fn assert_books_agree(db: &TestDb, gateway: &Gateway) {
    let (charged, charged_sum) = gateway.net_charged().await;
    let (paid, paid_sum) = recorded(db).await;
    assert_eq!(charged, paid, "gateway log: {:#?}", gateway.log().await);
    assert_eq!(charged_sum, paid_sum);
    // An invoice is paid exactly when its payments cover it: never paid without the
    // money, never the money without the invoice paid.
    let mismatched = db
        .count(
            "select count(*) from invoices i
              where (i.status = 'paid') <> (coalesce((select sum(p.amount) from payments p
                                                       where p.invoice_id = i.id), 0) >= i.amount)",
        )
        .await;
    assert_eq!(mismatched, 0, "paid invoices and payments disagree");
}

/// `POST /v1/payments`, or `None` when the connection dropped before an answer.
async fn try_pay(api: &Api, key: Option<&str>, body: Value) -> Option<Reply> {
    let mut request = api
        .http
        .post(format!("{}/v1/payments", api.base))
        .bearer_auth(&api.key)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.ok()?;
    Reply::read(response).await.ok()
}

pub(crate) async fn pay(api: &Api, key: &str, invoice: &str, method: &str) -> Reply {
    try_pay(
        api,
        Some(key),
        json!({"invoice_id": invoice, "method": method}),
    )
    .await
    .expect("an answer")
}

pub(crate) fn up_env(gateway: &Gateway) -> Vec<(&'static str, String)> {
    vec![
        ("DHANMAN_GATEWAY_URL", gateway.base.clone()),
        ("DHANMAN_GATEWAY_TIMEOUT_MS", "5000".into()),
        ("DHANMAN_GATEWAY_BACKOFF_MS", "20".into()),
    ]
}

pub(crate) fn spawn_up(setup: &Setup, env: &[(&'static str, String)]) -> Proc {
    setup.spawn_with_env(&["up"], &env_refs(env))
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn metrics(api: &Api) -> String {
    api.http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one sample line (`name{labels} value`), or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// HTTP attempts the API made at the gateway (fast failures of the open breaker left out).
fn attempts(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("dhanman_gateway_requests_total{"))
        .filter(|l| !l.contains("outcome=\"breaker_open\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Once the ledger has applied every event named, the customer owes nothing. Each token
/// covers its own event: the invoice's (another topic) is waited for as well.
async fn assert_settled_to_zero(api: &Api, customer: uuid::Uuid, tokens: &[&str]) {
    for token in tokens {
        let posted = api
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await;
        assert_eq!(posted.status, 200, "{}", posted.body);
    }
    let balance = api.get(&format!("/v1/customers/{customer}/balance")).await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    assert_eq!(
        balance.body["balances"][0]["balance"], "0.00",
        "{}",
        balance.body
    );
}

/// The saga recorded for a request's `Idempotency-Key`, once it is.
async fn saga_id(db: &TestDb, key: &str) -> uuid::Uuid {
    eventually("the saga to be recorded", Duration::from_secs(10), || {
        let (pool, key) = (db.pool.clone(), key.to_string());
        async move {
            sqlx::query_as::<_, (uuid::Uuid,)>(
                "select id from payment_sagas where idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .map(|(id,)| id)
        }
    })
    .await
}

/// The gateway key of a saga's charge (`dhanman_payments::saga::charge_key`).
fn charge_key(saga: uuid::Uuid) -> String {
    format!("dhanman-payment-{saga}")
}

fn step_names(view: &Value) -> Vec<String> {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect()
}

async fn saga_state(api: &Api, payment_id: &str) -> String {
    let r = api.get(&format!("/v1/payments/{payment_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["state"].as_str().unwrap().to_string()
}

/// A test's world: its database, a gateway process, `dhanman up` pointed at it with
/// `extra` settings, and an organization's API.
struct World {
    db: TestDb,
    setup: Setup,
    gateway: Gateway,
    env: Vec<(&'static str, String)>,
    up: Proc,
    api: Api,
}

async fn world(extra: &[(&'static str, &str)]) -> World {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let gateway = Gateway::start(&setup).await;
    let mut env = up_env(&gateway);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let up = spawn_up(&setup, &env);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Lakeview Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    World {
        db,
        setup,
        gateway,
        env,
        up,
        api,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_charges_once_posts_to_the_ledger_and_replays_by_key() {
    let World {
        db,
        setup,
        gateway,
        up,
        api,
        ..
    } = world(&[]).await;
    let (_, other_key) = create_org(&setup, "Hillside Towers").await;
    let other = Api::new(&setup.base_url(), &other_key);
    let asha = api.customer("Asha").await;
    let (invoice_id, invoice_token) = invoice(&api, asha, "1500.00").await;

    // Refusals name the field and write nothing.
    let no_key = try_pay(
        &api,
        None,
        json!({"invoice_id": invoice_id, "method": "upi"}),
    )
    .await
    .unwrap();
    assert_eq!(no_key.status, 400, "{}", no_key.body);
    assert_eq!(no_key.body["field"], "Idempotency-Key");
    let bad_method = pay(&api, "k-bad", &invoice_id, "cash").await;
    assert_eq!(bad_method.status, 422, "{}", bad_method.body);
    assert_eq!(bad_method.body["field"], "method");
    let unknown = pay(&api, "k-unknown", &uuid::Uuid::now_v7().to_string(), "upi").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let foreign = pay(&other, "k-foreign", &invoice_id, "upi").await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(
        db.count("select count(*) from payment_sagas").await,
        0,
        "nothing recorded"
    );

    let paid = pay(&api, "asha-dec", &invoice_id, "upi").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    assert_eq!(paid.body["state"], "completed");
    assert_eq!(paid.body["amount"], "1500.00");
    let payment_id = paid.body["payment_id"].as_str().unwrap().to_string();
    let token = paid.body["consistency_token"].as_str().unwrap().to_string();

    let invoice_now = api.get(&format!("/v1/invoices/{invoice_id}")).await;
    assert_eq!(invoice_now.body["status"], "paid", "{}", invoice_now.body);
    assert_settled_to_zero(&api, asha, &[&invoice_token, &token]).await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from journal_entries where reference_id = '{payment_id}'"
        ))
        .await,
        1
    );
    let log = gateway.log().await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["kind"], "charge");
    assert_eq!(log[0]["amount"], "1500.00");
    assert_eq!(paid.body["charge_id"], log[0]["charge_id"]);

    // The same key and body: the same payment, nothing charged again. Another body: 409.
    let again = pay(&api, "asha-dec", &invoice_id, "upi").await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["payment_id"], payment_id.as_str());
    assert_eq!(pay(&api, "asha-dec", &invoice_id, "card").await.status, 409);
    // A second payment of the paid invoice: 409.
    let second = pay(&api, "asha-dec-2", &invoice_id, "upi").await;
    assert_eq!(second.status, 409, "{}", second.body);
    // The same key from another user of the organization is that user's own key: not a
    // replay of the payment above (so 409, the invoice being paid), and nothing charged.
    let colleague =
        crate::keys::invite(&db, &api, "ravi@payments.example", "Ravi", "accountant").await;
    let theirs = pay(&colleague.api, "asha-dec", &invoice_id, "upi").await;
    assert_eq!(theirs.status, 409, "{}", theirs.body);
    assert!(
        theirs.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("already paid")),
        "{}",
        theirs.body
    );
    assert_eq!(gateway.log().await.len(), 1);
    assert_books_agree(&db, &gateway).await;

    // The saga's steps, to its own organization only.
    let view = api.get(&format!("/v1/payments/{payment_id}")).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let steps: Vec<&str> = view.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["started", "charging", "charged", "completed"]);
    assert_eq!(
        other
            .get(&format!("/v1/payments/{payment_id}"))
            .await
            .status,
        404
    );

    let text = metrics(&api).await;
    assert!(
        sample(
            &text,
            "dhanman_gateway_requests_total{op=\"charge\",outcome=\"ok\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("dhanman_gateway_request_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(sample(&text, "dhanman_gateway_breaker_state"), 0.0);
    let ready = api.get("/readyz").await;
    assert_eq!(ready.body["payment_gateway"], "closed", "{}", ready.body);
    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_fails_the_payment_with_no_ledger_change() {
    let World {
        db,
        setup,
        gateway,
        up,
        api,
        ..
    } = world(&[]).await;
    let ravi = api.customer("Ravi").await;
    let (invoice_id, invoice_token) = invoice(&api, ravi, "800.00").await;

    // The gateway declines a card charge whose reference says so (its test card).
    let declined = try_pay(
        &api,
        Some("ravi-card"),
        json!({"invoice_id": invoice_id, "method": "card", "reference": "decline me"}),
    )
    .await
    .unwrap();
    assert_eq!(declined.status, 402, "{}", declined.body);
    assert_eq!(declined.body["error"], "payment_failed");
    assert_eq!(declined.body["state"], "failed");
    let failed_id = declined.body["payment_id"].as_str().unwrap().to_string();
    assert_eq!(
        api.get(&format!("/v1/invoices/{invoice_id}")).await.body["status"],
        "open"
    );
    assert_eq!(recorded(&db).await.0, 0);

    let records = read_topic(&setup.topic("dhanman.sales.payments"), 1).await;
    assert_eq!(
        records[0].header("record_name"),
        Some("dhanman.sales.PaymentFailed")
    );

    // The invoice is free again: a UPI payment goes through. It shares the customer's
    // partition with the PaymentFailed, so once the ledger applied it, it saw the failure.
    let ok = pay(&api, "ravi-upi", &invoice_id, "upi").await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let token = ok.body["consistency_token"].as_str().unwrap();
    assert_settled_to_zero(&api, ravi, &[&invoice_token, token]).await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from journal_entries where reference_id = '{failed_id}'"
        ))
        .await,
        0,
        "a failed payment posts nothing"
    );
    let log = gateway.log().await;
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0]["status"], "declined");
    assert_books_agree(&db, &gateway).await;
    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_saga_step_is_finished_on_restart_with_one_charge() {
    let World {
        db,
        setup,
        gateway,
        env,
        mut up,
        api,
    } = world(&[]).await;
    let meera = api.customer("Meera").await;

    for point in ["after-start", "after-charge", "after-complete"] {
        let (invoice_id, _) = invoice(&api, meera, "1200.00").await;
        // Restart with the crash switch on.
        up.kill().await;
        let mut crashing = env.clone();
        crashing.push(("DHANMAN_FAULT_CRASH_AT", point.into()));
        up = spawn_up(&setup, &crashing);
        setup.wait_ready(&up).await;
        let key = format!("meera-{point}");
        let reply = try_pay(
            &api,
            Some(&key),
            json!({"invoice_id": invoice_id, "method": "netbanking"}),
        )
        .await;
        assert!(
            reply.as_ref().is_none_or(|r| r.status >= 500),
            "{point}: the process should die before answering"
        );
        let status = up.exited(Duration::from_secs(30)).await;
        assert!(!status.success(), "{point}: {status}");

        // Restart without it: recovery finishes the saga before the API serves.
        up = spawn_up(&setup, &env);
        setup.wait_ready(&up).await;
        let (payment_id,): (uuid::Uuid,) =
            sqlx::query_as("select id from payment_sagas where idempotency_key = $1")
                .bind(&key)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let payment_id = payment_id.to_string();
        eventually(
            &format!("{point}: the saga to complete"),
            Duration::from_secs(30),
            || {
                let (api, id) = (api.clone(), payment_id.clone());
                async move { (saga_state(&api, &id).await == "completed").then_some(()) }
            },
        )
        .await;
        assert_eq!(
            api.get(&format!("/v1/invoices/{invoice_id}")).await.body["status"],
            "paid",
            "{point}"
        );
        // The client's retry gets the same payment.
        let retry = pay(&api, &key, &invoice_id, "netbanking").await;
        assert_eq!(retry.status, 201, "{point}: {}", retry.body);
        assert_eq!(retry.body["payment_id"], payment_id.as_str());
        assert_books_agree(&db, &gateway).await;
    }
    assert_eq!(gateway.net_charged().await.0, 3);

    // Charged, but the answer lost: the client's retry under the same gateway key replays
    // the charge instead of making another.
    let (invoice_id, _) = invoice(&api, meera, "300.00").await;
    gateway.control(json!({"lose_next": 1})).await;
    let paid = pay(&api, "meera-lost", &invoice_id, "upi").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    assert_eq!(gateway.net_charged().await.0, 4);
    assert_books_agree(&db, &gateway).await;
    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_for_an_invoice_voided_meanwhile_is_refunded_even_across_crashes() {
    let World {
        db,
        setup,
        gateway,
        env,
        mut up,
        api,
    } = world(&[]).await;
    let kiran = api.customer("Kiran").await;

    for point in [None, Some("before-refund"), Some("after-refund")] {
        let name = point.unwrap_or("no crash");
        if let Some(point) = point {
            up.kill().await;
            let mut crashing = env.clone();
            crashing.push(("DHANMAN_FAULT_CRASH_AT", point.into()));
            up = spawn_up(&setup, &crashing);
            setup.wait_ready(&up).await;
        }
        let (invoice_id, _) = invoice(&api, kiran, "450.00").await;
        // A slow gateway: the void lands while the charge is under way.
        gateway.control(json!({"latency_ms": 1500})).await;
        let key = format!("kiran-{name}");
        let paying = {
            let (api, invoice_id, key) = (api.clone(), invoice_id.clone(), key.clone());
            tokio::spawn(async move {
                try_pay(
                    &api,
                    Some(&key),
                    json!({"invoice_id": invoice_id, "method": "upi"}),
                )
                .await
            })
        };
        db.wait_count(
            "the saga to be charging",
            &format!(
                "select count(*) from payment_sagas where idempotency_key = '{key}' and state = 'charging'"
            ),
            1,
            Duration::from_secs(10),
        )
        .await;
        let void = api
            .post(&format!("/v1/invoices/{invoice_id}/void"), json!({}))
            .await;
        assert_eq!(void.status, 200, "{name}: {}", void.body);
        let reply = paying.await.unwrap();
        gateway.control(json!({"latency_ms": 0})).await;
        if point.is_some() {
            assert!(
                reply.is_none_or(|r| r.status >= 500),
                "{name}: should crash"
            );
            let status = up.exited(Duration::from_secs(30)).await;
            assert!(!status.success(), "{name}: {status}");
            up = spawn_up(&setup, &env);
            setup.wait_ready(&up).await;
        } else {
            let reply = reply.expect("an answer");
            assert_eq!(reply.status, 409, "{}", reply.body);
            assert_eq!(reply.body["state"], "compensated");
            assert!(reply.body["refund_id"].is_string(), "{}", reply.body);
        }
        let retry = pay(&api, &key, &invoice_id, "upi").await;
        assert_eq!(retry.status, 409, "{name}: {}", retry.body);
        assert_eq!(retry.body["state"], "compensated", "{name}");
        let steps: Vec<String> = retry.body["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            steps,
            ["started", "charging", "charged", "compensated"],
            "{name}"
        );
        assert_books_agree(&db, &gateway).await;
    }
    // Three charges, each refunded exactly once.
    let log = gateway.log().await;
    let kinds: Vec<&str> = log.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["charge", "refund", "charge", "refund", "charge", "refund"]
    );
    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_when_the_gateway_is_down_fails_fast_then_closes() {
    let World {
        db,
        gateway,
        up,
        api,
        ..
    } = world(&[
        ("DHANMAN_GATEWAY_RETRIES", "2"),
        ("DHANMAN_GATEWAY_BREAKER_THRESHOLD", "3"),
        ("DHANMAN_GATEWAY_BREAKER_COOL_DOWN_MS", "3000"),
        ("DHANMAN_PAYMENT_RECOVERY_INTERVAL_MS", "1000"),
    ])
    .await;
    let anil = api.customer("Anil").await;
    let (first, _) = invoice(&api, anil, "100.00").await;
    let (second, _) = invoice(&api, anil, "200.00").await;

    gateway.control(json!({"down": true})).await;
    // Three attempts, three 503s: the breaker opens. The saga stays resumable.
    let failed = pay(&api, "anil-1", &first, "upi").await;
    assert_eq!(failed.status, 503, "{}", failed.body);
    assert!(failed.headers.contains_key("retry-after"));
    assert_eq!(failed.body["state"], "charging", "{}", failed.body);
    let text = metrics(&api).await;
    assert_eq!(
        sample(&text, "dhanman_gateway_breaker_state"),
        1.0,
        "{text}"
    );
    assert!(
        sample(&text, "dhanman_gateway_retries_total") >= 2.0,
        "{text}"
    );
    let tried = attempts(&text);
    assert_eq!(tried, 3.0, "{text}");
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["payment_gateway"], "open", "{}", ready.body);

    // Open: the next call fails fast, records nothing and sends nothing.
    let started = Instant::now();
    let fast = pay(&api, "anil-2", &second, "upi").await;
    assert_eq!(fast.status, 503, "{}", fast.body);
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(fast.headers.contains_key("retry-after"));
    assert!(fast.body["payment_id"].is_null(), "{}", fast.body);
    assert_eq!(attempts(&metrics(&api).await), tried);
    assert_eq!(
        db.count("select count(*) from payment_sagas").await,
        1,
        "nothing recorded for a fast failure"
    );

    // Back up: after the cool-down a trial closes the breaker and payments go through.
    gateway.control(json!({"down": false})).await;
    let ok =
        eventually(
            "a payment after the cool-down",
            Duration::from_secs(30),
            || {
                let (api, second) = (api.clone(), second.clone());
                async move {
                    Some(pay(&api, "anil-2", &second, "upi").await).filter(|r| r.status == 201)
                }
            },
        )
        .await;
    assert_eq!(ok.body["state"], "completed");
    assert_eq!(
        sample(&metrics(&api).await, "dhanman_gateway_breaker_state"),
        0.0
    );
    assert_eq!(api.get("/readyz").await.body["payment_gateway"], "closed");
    // The saga left charging is finished by the periodic recovery.
    let first_id = failed.body["payment_id"].as_str().unwrap().to_string();
    eventually(
        "the first saga to complete",
        Duration::from_secs(30),
        || {
            let (api, id) = (api.clone(), first_id.clone());
            async move { (saga_state(&api, &id).await == "completed").then_some(()) }
        },
    )
    .await;
    assert_eq!(gateway.net_charged().await.0, 2);
    assert_books_agree(&db, &gateway).await;
    drop(up);
    db.drop_db().await;
}

/// Two drivers of one saga, a retry: the request retried with the same Idempotency-Key
/// while the gateway still holds the first charge finds the saga's lease taken, so it
/// calls nothing and answers "in flight" (503, `charging`). The gateway sees one charge
/// request for the saga's key, and one payment is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_charge_is_in_flight_sends_no_second_charge() {
    let World {
        db,
        gateway,
        up,
        api,
        ..
    } = world(&[]).await;
    let divya = api.customer("Divya").await;
    let (invoice_id, _) = invoice(&api, divya, "975.50").await;

    gateway.control(json!({"latency_ms": 3000})).await;
    let first = {
        let (api, invoice_id) = (api.clone(), invoice_id.clone());
        tokio::spawn(async move { pay(&api, "divya-dec", &invoice_id, "upi").await })
    };
    let key = charge_key(saga_id(&db, "divya-dec").await);
    eventually(
        "the first charge to reach the gateway",
        Duration::from_secs(10),
        || {
            let (gateway, key) = (&gateway, key.clone());
            async move { (gateway.charge_requests(&key).await == 1).then_some(()) }
        },
    )
    .await;

    let started = Instant::now();
    let retry = pay(&api, "divya-dec", &invoice_id, "upi").await;
    assert_eq!(retry.status, 503, "{}", retry.body);
    assert_eq!(retry.body["state"], "charging", "{}", retry.body);
    assert!(retry.headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the retry waited for the gateway: {:?}",
        started.elapsed()
    );
    assert_eq!(
        gateway.charge_requests(&key).await,
        1,
        "a second driver charged"
    );

    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["state"], "completed");
    gateway.control(json!({"latency_ms": 0})).await;
    // Done: the lease is released, and a retry answers the payment without a call.
    let again = pay(&api, "divya-dec", &invoice_id, "upi").await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["payment_id"], first.body["payment_id"]);
    assert_eq!(gateway.charge_requests(&key).await, 1);
    assert_eq!(
        db.count("select count(*) from payment_sagas where lease_owner is not null")
            .await,
        0
    );
    assert_eq!(gateway.log().await.len(), 1);
    assert_eq!(recorded(&db).await, (1, "975.50".parse().unwrap()));
    assert_books_agree(&db, &gateway).await;
    drop(up);
    db.drop_db().await;
}

/// Two drivers of one saga, recoveries: two API processes start at once and both recover
/// the saga left `charging`; while the gateway holds the charge of the one that took the
/// lease, the other leaves the saga to it. One charge request for the saga's key, one
/// payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_recovering_one_saga_send_one_charge() {
    let World {
        db,
        setup,
        gateway,
        env,
        mut up,
        api,
    } = world(&[("DHANMAN_GATEWAY_RETRIES", "0")]).await;
    let farah = api.customer("Farah").await;
    let (invoice_id, _) = invoice(&api, farah, "2200.00").await;

    // The one attempt fails (503, nothing charged): the saga is left charging.
    gateway.control(json!({"fail_next": 1})).await;
    let left = pay(&api, "farah-dec", &invoice_id, "netbanking").await;
    assert_eq!(left.status, 503, "{}", left.body);
    assert_eq!(left.body["state"], "charging");
    let key = charge_key(saga_id(&db, "farah-dec").await);
    assert_eq!(gateway.charge_requests(&key).await, 1);
    up.kill().await;

    // Two API processes, each recovering at start-up; the gateway holds a charge 4 s
    // (less than the client's 5 s timeout).
    gateway.control(json!({"latency_ms": 4000})).await;
    let other_port = free_port();
    let other_addr = format!("127.0.0.1:{other_port}");
    let mut other_env = env.clone();
    other_env.push(("DHANMAN_HTTP_ADDR", other_addr.clone()));
    let one = setup.spawn_with_env(&["api"], &env_refs(&env));
    let two = setup.spawn_with_env(&["api"], &env_refs(&other_env));
    setup.wait_ready(&one).await;
    let ready = format!("http://{other_addr}/readyz");
    eventually("the second API to serve", Duration::from_secs(60), || {
        let request = api.http.get(&ready);
        async move {
            request
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;

    let payment_id = left.body["payment_id"].as_str().unwrap().to_string();
    eventually("the saga to complete", Duration::from_secs(30), || {
        let (api, id) = (api.clone(), payment_id.clone());
        async move { (saga_state(&api, &id).await == "completed").then_some(()) }
    })
    .await;
    assert_eq!(
        gateway.charge_requests(&key).await,
        2,
        "one charge request before, exactly one by the two recoveries: {:#?}",
        gateway.requests().await
    );
    // Both recovered it: one drove it, the other found its lease taken.
    let logs = [one.log_text(), two.log_text()];
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("payment saga left to the driver holding its lease"))
            .count(),
        1,
        "the recoveries did not overlap: {} / {}",
        one.log.display(),
        two.log.display()
    );
    gateway.control(json!({"latency_ms": 0})).await;
    assert_eq!(gateway.log().await.len(), 1);
    assert_eq!(recorded(&db).await, (1, "2200.00".parse().unwrap()));
    assert_books_agree(&db, &gateway).await;
    drop((one, two));
    db.drop_db().await;
}

/// A charge that lands on a saga already final is refunded, never kept: the saga is
/// ended (failed, as an operator or a driver that took over a lapsed lease would) while
/// its charge is held at the gateway; when the charge lands, the driver records it
/// (`late_charge`), refunds it (`late_charge_refunded`, counted in the saga metric) and
/// the books stay as they were: no payment, the invoice open, charge and refund netting
/// to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_landing_on_a_saga_already_final_is_refunded() {
    let World {
        db,
        gateway,
        up,
        api,
        ..
    } = world(&[]).await;
    let gita = api.customer("Gita").await;
    let (invoice_id, _) = invoice(&api, gita, "640.00").await;

    gateway.control(json!({"latency_ms": 2000})).await;
    let paying = {
        let (api, invoice_id) = (api.clone(), invoice_id.clone());
        tokio::spawn(async move { pay(&api, "gita-dec", &invoice_id, "card").await })
    };
    let saga = saga_id(&db, "gita-dec").await;
    let key = charge_key(saga);
    eventually(
        "the charge to be in flight at the gateway",
        Duration::from_secs(10),
        || {
            let (gateway, key) = (&gateway, key.clone());
            async move { (gateway.charge_requests(&key).await == 1).then_some(()) }
        },
    )
    .await;
    // The saga ends while its charge is held: failed, nothing recorded.
    let mut tx = db.pool.begin().await.unwrap();
    let ended = sqlx::query(
        "update payment_sagas set state = 'failed', updated_at = now(),
                failure_reason = 'ended while its charge was in flight'
          where id = $1 and state = 'charging'",
    )
    .bind(saga)
    .execute(&mut *tx)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(ended, 1);
    sqlx::query(
        "insert into payment_saga_steps (saga_id, state, detail)
         values ($1, 'failed', '{\"reason\": \"ended while its charge was in flight\"}')",
    )
    .bind(saga)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let reply = paying.await.unwrap();
    gateway.control(json!({"latency_ms": 0})).await;
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(reply.body["state"], "failed");

    let log = gateway.log().await;
    let kinds: Vec<&str> = log.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["charge", "refund"], "{log:#?}");
    assert_eq!(log[0]["status"], "succeeded");
    assert_eq!(log[1]["charge_id"], log[0]["charge_id"]);
    assert_eq!(log[1]["amount"], "640.00");
    assert_eq!(
        log[1]["idempotency_key"],
        format!("dhanman-late-refund-{saga}").as_str()
    );

    let view = api.get(&format!("/v1/payments/{saga}")).await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(
        step_names(&view.body),
        [
            "started",
            "charging",
            "failed",
            "late_charge",
            "late_charge_refunded"
        ]
    );
    let refunded = &view.body["steps"][4]["detail"];
    assert_eq!(refunded["charge_id"], log[0]["charge_id"]);
    assert_eq!(refunded["refund_id"], log[1]["refund_id"]);

    // The books are unchanged: no payment, the invoice open, nothing posted.
    assert_eq!(recorded(&db).await, (0, Decimal::ZERO));
    assert_eq!(
        api.get(&format!("/v1/invoices/{invoice_id}")).await.body["status"],
        "open"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from journal_entries where reference_id = '{saga}'"
        ))
        .await,
        0
    );
    assert_books_agree(&db, &gateway).await;
    let text = metrics(&api).await;
    assert_eq!(
        sample(
            &text,
            "dhanman_payment_sagas_total{outcome=\"late_charge_refunded\"}"
        ),
        1.0,
        "{text}"
    );
    // A retry of the request answers the same, and refunds nothing twice.
    let retry = pay(&api, "gita-dec", &invoice_id, "card").await;
    assert_eq!(retry.status, 402, "{}", retry.body);
    assert_eq!(gateway.log().await.len(), 2);
    drop(up);
    db.drop_db().await;
}

/// An ambiguous 4xx is not "nothing charged": the gateway charges and answers 409
/// (`ambiguous_next`); the saga does not fail but asks the gateway what the key did and
/// completes with that one charge and one payment. The same 409 with nothing charged
/// (`busy_next`) leaves the saga `charging` (503), and the retry completes it, again with
/// one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_409_is_reconciled_not_read_as_nothing_charged() {
    let World {
        db,
        gateway,
        up,
        api,
        ..
    } = world(&[]).await;
    let hari = api.customer("Hari").await;
    let (first, _) = invoice(&api, hari, "1200.00").await;
    let (second, _) = invoice(&api, hari, "80.25").await;

    gateway.control(json!({"ambiguous_next": 1})).await;
    let paid = pay(&api, "hari-1", &first, "upi").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    assert_eq!(paid.body["state"], "completed");
    assert_eq!(
        step_names(&paid.body),
        [
            "started",
            "charging",
            "charge_ambiguous",
            "charged",
            "completed"
        ]
    );
    assert_eq!(paid.body["steps"][2]["detail"]["status"], 409);
    let log = gateway.log().await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(paid.body["charge_id"], log[0]["charge_id"]);
    let key = charge_key(paid.body["payment_id"].as_str().unwrap().parse().unwrap());
    assert_eq!(gateway.charge_requests(&key).await, 1);
    let lookups = gateway
        .requests()
        .await
        .iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["path"] == format!("/v1/charges?idempotency_key={key}").as_str()
        })
        .count();
    assert_eq!(lookups, 1);
    assert_eq!(
        api.get(&format!("/v1/invoices/{first}")).await.body["status"],
        "paid"
    );
    assert_eq!(recorded(&db).await, (1, "1200.00".parse().unwrap()));
    assert_books_agree(&db, &gateway).await;

    // The same answer with nothing charged: resumable, not failed.
    gateway.control(json!({"busy_next": 1})).await;
    let pending = pay(&api, "hari-2", &second, "upi").await;
    assert_eq!(pending.status, 503, "{}", pending.body);
    assert_eq!(pending.body["state"], "charging");
    assert_eq!(
        step_names(&pending.body),
        [
            "started",
            "charging",
            "charge_ambiguous",
            "charge_not_found"
        ]
    );
    assert_eq!(gateway.log().await.len(), 1);
    let retry = pay(&api, "hari-2", &second, "upi").await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.body["payment_id"], pending.body["payment_id"]);
    assert_eq!(gateway.log().await.len(), 2);
    assert_eq!(recorded(&db).await, (2, "1280.25".parse().unwrap()));
    assert_books_agree(&db, &gateway).await;

    let text = metrics(&api).await;
    assert_eq!(
        sample(
            &text,
            "dhanman_gateway_requests_total{op=\"charge\",outcome=\"ambiguous\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "dhanman_payment_sagas_total{outcome=\"failed\"}"),
        0.0
    );
    drop(up);
    db.drop_db().await;
}
