//! The gateway over a real socket with a real HTTP client.

// Test code: a failed unwrap is a failed test, and what it prints is for the reader.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod helpers;

use std::time::{Duration, Instant};

use dhanman_devpeers::{Charge, IDEMPOTENT_REPLAYED, LogKind, Status, Switches};
use helpers::{charge_body, client, spawn_gateway};
use serde_json::{Value, json};

async fn error_field(response: reqwest::Response) -> Option<String> {
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    body["field"].as_str().map(str::to_string)
}

#[tokio::test]
async fn the_same_key_twice_charges_once_and_answers_the_same() {
    let gw = spawn_gateway(Switches::default()).await;
    let body = charge_body("inv-1", "1500.50");

    let first = gw.charge("key-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get(IDEMPOTENT_REPLAYED).is_none());
    let first = first.bytes().await.unwrap();
    // The same request, the amount written another way.
    let again = gw.charge("key-1", &charge_body("inv-1", "1500.5")).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()[IDEMPOTENT_REPLAYED], "true");
    assert_eq!(again.bytes().await.unwrap(), first);

    let charge: Charge = serde_json::from_slice(&first).unwrap();
    assert_eq!(charge.status, Status::Succeeded);
    assert_eq!(charge.amount.to_string(), "1500.50");
    assert_eq!(
        (charge.currency.as_str(), charge.reference.as_str()),
        ("INR", "inv-1")
    );
    let raw: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(raw["amount"], "1500.50");
    assert!(raw["created_at"].is_string() && raw["charge_id"].is_string());

    let log = gw.log().await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (
            log[0].kind,
            log[0].charge_id.as_str(),
            log[0].idempotency_key.as_str()
        ),
        (LogKind::Charge, charge.charge_id.as_str(), "key-1")
    );
    let by_id = gw
        .get_json(&format!("/v1/charges/{}", charge.charge_id))
        .await;
    assert_eq!(by_id["charge_id"], charge.charge_id.as_str());
    let by_reference = gw.get_json("/v1/charges?reference=inv-1").await;
    assert_eq!(by_reference["charges"].as_array().unwrap().len(), 1);
    let none = gw.get_json("/v1/charges?reference=inv-2").await;
    assert_eq!(none["charges"], json!([]));
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_a_conflict() {
    let gw = spawn_gateway(Switches::default()).await;
    assert_eq!(
        gw.charge("k", &charge_body("inv-1", "100")).await.status(),
        201
    );

    let other = gw.charge("k", &charge_body("inv-1", "200")).await;
    assert_eq!(other.status(), 409);
    assert_eq!(error_field(other).await.as_deref(), Some("Idempotency-Key"));
    let other = gw.charge("k", &charge_body("inv-2", "100")).await;
    assert_eq!(other.status(), 409);
    assert_eq!(gw.log().await.len(), 1);
}

#[tokio::test]
async fn a_bad_amount_is_422_naming_amount() {
    let gw = spawn_gateway(Switches::default()).await;
    for (i, amount) in [
        json!("abc"),
        json!("0"),
        json!("-5"),
        json!("1.005"),
        json!(10.5),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = charge_body("inv-1", "1");
        body["amount"] = amount.clone();
        let response = gw.charge(&format!("k{i}"), &body).await;
        assert_eq!(response.status(), 422, "amount {amount}");
        assert_eq!(error_field(response).await.as_deref(), Some("amount"));
    }
    let mut body = charge_body("inv-1", "1");
    body["method"] = json!("cash");
    let response = gw.charge("k-method", &body).await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_field(response).await.as_deref(), Some("method"));
    assert!(gw.log().await.is_empty());
    // A refused request leaves its key unused.
    assert_eq!(
        gw.charge("k0", &charge_body("inv-1", "1")).await.status(),
        201
    );
}

#[tokio::test]
async fn no_idempotency_key_is_400_naming_the_header() {
    let gw = spawn_gateway(Switches::default()).await;
    let response = gw
        .charge_with(&gw.http, None, &charge_body("inv-1", "1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        error_field(response).await.as_deref(),
        Some("Idempotency-Key")
    );
    assert!(gw.log().await.is_empty());
}

#[tokio::test]
async fn a_declined_card_is_402_logged_as_declined_and_not_retried() {
    let gw = spawn_gateway(Switches::default()).await;
    let mut body = charge_body("inv-decline-7", "500");
    body["method"] = json!("card");

    let response = gw.charge("k", &body).await;
    assert_eq!(response.status(), 402);
    let first = response.bytes().await.unwrap();
    let declined: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(declined["status"], "declined");
    assert!(declined["error"].is_string());
    // A retry under the key gets the decline again; nothing new is attempted.
    let again = gw.charge("k", &body).await;
    assert_eq!(again.status(), 402);
    assert_eq!(again.bytes().await.unwrap(), first);

    // The same reference by UPI goes through; a switch declines anything.
    body["method"] = json!("upi");
    assert_eq!(gw.charge("k2", &body).await.status(), 201);
    gw.control(json!({"decline_next": 1})).await;
    assert_eq!(
        gw.charge("k3", &charge_body("inv-8", "5")).await.status(),
        402
    );
    assert_eq!(
        gw.charge("k4", &charge_body("inv-8", "5")).await.status(),
        201
    );

    let statuses: Vec<_> = gw.log().await.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            Status::Declined,
            Status::Succeeded,
            Status::Declined,
            Status::Succeeded
        ]
    );
}

#[tokio::test]
async fn a_charge_is_refunded_once() {
    let gw = spawn_gateway(Switches::default()).await;
    let charge: Charge = gw
        .charge("c", &charge_body("inv-1", "750.25"))
        .await
        .json()
        .await
        .unwrap();
    let id = &charge.charge_id;

    let refund = gw.refund("r1", id, &json!({})).await;
    assert_eq!(refund.status(), 201);
    let first = refund.bytes().await.unwrap();
    let refund: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(refund["charge_id"], id.as_str());
    assert_eq!(refund["amount"], "750.25");
    assert_eq!(refund["status"], "succeeded");
    assert!(refund["refund_id"].is_string());

    let replay = gw.refund("r1", id, &json!({})).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.bytes().await.unwrap(), first);
    assert_eq!(gw.refund("r2", id, &json!({})).await.status(), 409);
    let unknown = gw.refund("r3", "ch_nope", &json!({})).await;
    assert_eq!(unknown.status(), 404);

    let shown = gw.get_json(&format!("/v1/charges/{id}")).await;
    assert_eq!(shown["amount_refunded"], "750.25");
    assert_eq!(shown["refunds"].as_array().unwrap().len(), 1);
    let kinds: Vec<_> = gw.log().await.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [LogKind::Charge, LogKind::Refund]);
}

#[tokio::test]
async fn fail_next_answers_503_then_the_retry_succeeds() {
    let gw = spawn_gateway(Switches::default()).await;
    gw.control(json!({"fail_next": 2})).await;
    let body = charge_body("inv-1", "10");
    for _ in 0..2 {
        let response = gw.charge("k", &body).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
    }
    assert!(gw.log().await.is_empty());
    let response = gw.charge("k", &body).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().get(IDEMPOTENT_REPLAYED).is_none());
    assert_eq!(gw.log().await.len(), 1);
    assert_eq!(gw.get_json("/_control").await["fail_next"], 0);
}

#[tokio::test]
async fn a_lost_response_is_an_error_to_the_client_but_the_charge_is_made() {
    let gw = spawn_gateway(Switches::default()).await;
    gw.control(json!({"lose_next": 1})).await;
    let body = charge_body("inv-1", "99.99");

    let lost = gw.charge_with(&gw.http, Some("k"), &body).await;
    let error = lost.expect_err("the response should be lost");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(
        error.status().is_none(),
        "no status line may reach the client: {error:?}"
    );

    let log = gw.log().await;
    assert_eq!(log.len(), 1, "charged although the answer was lost");
    let retry = gw.charge("k", &body).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()[IDEMPOTENT_REPLAYED], "true");
    let charge: Charge = retry.json().await.unwrap();
    assert_eq!(charge.charge_id, log[0].charge_id);
    assert_eq!(gw.log().await.len(), 1, "the retry charged again");
}

#[tokio::test]
async fn a_hanging_request_times_out_and_charges_nothing() {
    let gw = spawn_gateway(Switches::default()).await;
    gw.control(json!({"hang_next": 1})).await;
    let body = charge_body("inv-1", "10");

    let impatient = client(Duration::from_millis(300));
    let error = gw
        .charge_with(&impatient, Some("k"), &body)
        .await
        .expect_err("the request should hang");
    assert!(error.is_timeout(), "{error:?}");
    assert!(gw.log().await.is_empty());

    assert_eq!(gw.charge("k", &body).await.status(), 201);
    assert_eq!(gw.log().await.len(), 1);
}

#[tokio::test]
async fn down_answers_503_to_everything_but_control() {
    let gw = spawn_gateway(Switches::default()).await;
    gw.control(json!({"down": true})).await;
    assert_eq!(
        gw.charge("k", &charge_body("inv-1", "1")).await.status(),
        503
    );
    for path in ["/v1/log", "/v1/charges", "/healthz"] {
        let status = gw.http.get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status, 503, "{path}");
    }
    gw.control(json!({"down": false})).await;
    assert_eq!(gw.get_json("/healthz").await["status"], "ok");
    assert_eq!(
        gw.charge("k", &charge_body("inv-1", "1")).await.status(),
        201
    );
    assert_eq!(gw.log().await.len(), 1);
}

#[tokio::test]
async fn latency_delays_every_request() {
    let gw = spawn_gateway(Switches {
        latency_ms: 150,
        ..Switches::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(
        gw.charge("k", &charge_body("inv-1", "1")).await.status(),
        201
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    gw.control(json!({"latency_ms": 300})).await;
    let started = Instant::now();
    gw.log().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_seeded_error_rate_fails_about_that_fraction() {
    let gw = spawn_gateway(Switches {
        error_rate: 0.25,
        seed: 42,
        ..Switches::default()
    })
    .await;
    let mut failed = 0;
    for i in 0..200 {
        let status = gw
            .charge(&format!("k{i}"), &charge_body("inv", "1"))
            .await
            .status();
        match status.as_u16() {
            503 => failed += 1,
            201 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (30..=70).contains(&failed),
        "{failed} of 200 failed at 0.25"
    );
    assert_eq!(gw.log().await.len(), 200 - failed);
}

/// What the saga will do: retry under the same key until an answer comes. Whatever the
/// faults, each key is charged exactly once and the answer names that charge.
#[tokio::test]
async fn retrying_under_every_fault_charges_each_key_once() {
    let gw = spawn_gateway(Switches {
        error_rate: 0.2,
        timeout_rate: 0.1,
        lost_response_rate: 0.2,
        hang_ms: 1_000,
        seed: 7,
        ..Switches::default()
    })
    .await;
    let impatient = client(Duration::from_millis(250));
    let mut answered = Vec::new();
    let mut faults_seen = 0;
    for i in 0..30 {
        let key = format!("k{i}");
        let body = charge_body(&format!("inv-{i}"), "10");
        let charge: Charge = loop {
            match gw.charge_with(&impatient, Some(&key), &body).await {
                Ok(response) if response.status() == 201 => break response.json().await.unwrap(),
                Ok(response) => assert_eq!(response.status(), 503),
                Err(_) => {}
            }
            faults_seen += 1;
            assert!(faults_seen < 500, "never got through");
        };
        answered.push((key, charge.charge_id));
    }
    assert!(
        faults_seen >= 5,
        "the faults were not exercised: {faults_seen}"
    );
    let log: Vec<_> = gw
        .log()
        .await
        .into_iter()
        .map(|e| (e.idempotency_key, e.charge_id))
        .collect();
    assert_eq!(log, answered);
}

#[tokio::test]
async fn bad_switches_are_422_naming_the_switch() {
    let gw = spawn_gateway(Switches::default()).await;
    for (patch, field) in [
        (json!({"error_rate": 1.5}), "error_rate"),
        (json!({"fail_next": -1}), "fail_next"),
        (json!({"explode": true}), "explode"),
    ] {
        let response = gw
            .http
            .put(gw.url("/_control"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{patch}");
        assert_eq!(error_field(response).await.as_deref(), Some(field));
    }
    let switches: Switches = serde_json::from_value(gw.get_json("/_control").await).unwrap();
    assert_eq!(switches, Switches::default());
    let missing = gw.http.get(gw.url("/v2/charges")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// `ambiguous_next` moves the money and answers 409 anyway; `busy_next` answers the same
/// 409 and moves nothing. Only the lookup by key tells them apart, and a replay under the
/// key gets the key's real answer.
#[tokio::test]
async fn an_ambiguous_409_hides_whether_money_moved_and_the_key_lookup_tells() {
    let gw = spawn_gateway(Switches::default()).await;
    gw.control(json!({"ambiguous_next": 1, "busy_next": 1}))
        .await;
    let body = charge_body("inv-1", "250.00");

    let charged = gw.charge("k-charged", &body).await;
    assert_eq!(charged.status(), 409);
    let charged_answer: Value = charged.json().await.unwrap();
    let busy = gw.charge("k-busy", &body).await;
    assert_eq!(busy.status(), 409);
    let busy_answer: Value = busy.json().await.unwrap();
    assert_eq!(charged_answer, busy_answer, "the answers must not tell");
    assert_eq!(charged_answer["field"], "Idempotency-Key");

    // The first was carried out: in the log, found by its key, replayed as a 201.
    let log = gw.log().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].idempotency_key, "k-charged");
    let found = gw.charges_by_key("k-charged").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].charge_id, log[0].charge_id);
    assert_eq!(found[0].status, Status::Succeeded);
    let replay = gw.charge("k-charged", &body).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
    let replayed: Charge = replay.json().await.unwrap();
    assert_eq!(replayed.charge_id, log[0].charge_id);

    // The second moved nothing and left its key unused: a retry charges now, once.
    assert!(gw.charges_by_key("k-busy").await.is_empty());
    let retry = gw.charge("k-busy", &body).await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get(IDEMPOTENT_REPLAYED).is_none());
    assert_eq!(gw.charges_by_key("k-busy").await.len(), 1);
    assert_eq!(gw.log().await.len(), 2);

    // A declined charge is found by its key too; an unknown key finds nothing.
    let mut card = charge_body("inv-decline", "10");
    card["method"] = json!("card");
    assert_eq!(gw.charge("k-declined", &card).await.status(), 402);
    let declined = gw.charges_by_key("k-declined").await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].status, Status::Declined);
    assert!(gw.charges_by_key("k-never").await.is_empty());
    let switches = gw.get_json("/_control").await;
    assert_eq!(
        (
            switches["ambiguous_next"].as_u64(),
            switches["busy_next"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

/// `ambiguous_next` acts on refunds as well: the refund is made, the answer is 409, and
/// a retry under the refund's key replays the refund instead of refunding twice.
#[tokio::test]
async fn an_ambiguous_refund_is_made_once_and_replayed() {
    let gw = spawn_gateway(Switches::default()).await;
    let charge: Charge = gw
        .charge("c", &charge_body("inv-1", "40.00"))
        .await
        .json()
        .await
        .unwrap();
    gw.control(json!({"ambiguous_next": 1})).await;
    let refund = gw.refund("r", &charge.charge_id, &json!({})).await;
    assert_eq!(refund.status(), 409);
    let again = gw.refund("r", &charge.charge_id, &json!({})).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()[IDEMPOTENT_REPLAYED], "true");
    let kinds: Vec<_> = gw.log().await.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [LogKind::Charge, LogKind::Refund]);
}

/// `/_requests` lists every `/v1` request as it arrived, with its key: replays, refusals,
/// injected faults and answers given while `down` included, which `/v1/log` leaves out.
/// It is not itself delayed by `latency_ms` nor refused by `down`.
#[tokio::test]
async fn every_request_is_listed_as_received_whatever_became_of_it() {
    let gw = spawn_gateway(Switches::default()).await;
    let body = charge_body("inv-1", "10");
    assert_eq!(gw.charge("k", &body).await.status(), 201);
    assert_eq!(gw.charge("k", &body).await.status(), 201); // a replay
    gw.control(json!({"fail_next": 1})).await;
    assert_eq!(gw.charge("k2", &body).await.status(), 503);
    let no_key = gw.charge_with(&gw.http, None, &body).await.unwrap();
    assert_eq!(no_key.status(), 400);
    gw.get_json("/v1/charges?idempotency_key=k").await;
    gw.control(json!({"down": true, "latency_ms": 2_000})).await;
    let started = Instant::now();
    let requests = gw.requests().await;
    assert!(started.elapsed() < Duration::from_millis(1_000));
    gw.control(json!({"down": false, "latency_ms": 0})).await;

    let seen: Vec<(u64, &str, &str, Option<&str>)> = requests
        .iter()
        .map(|r| {
            (
                r.seq,
                r.method.as_str(),
                r.path.as_str(),
                r.idempotency_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "POST", "/v1/charges", Some("k")),
            (2, "POST", "/v1/charges", Some("k")),
            (3, "POST", "/v1/charges", Some("k2")),
            (4, "POST", "/v1/charges", None),
            (5, "GET", "/v1/charges?idempotency_key=k", None),
        ]
    );
    assert_eq!(gw.log().await.len(), 1);
}
