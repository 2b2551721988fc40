//! Voiding invoices over real sockets against `dhanman up`: the void reverses the
//! invoice's posting, a paid, partly paid, already void or foreign invoice is refused
//! with nothing written, and a void and a payment racing for one invoice never both win.
//! On the topic itself, a void the ledger cannot match to one posted invoice in full (none
//! posted, another customer, currency or amount, voided before by another event) is
//! dead-lettered with the reason, and the books keep the invoice's receivable.

use std::time::Duration;

use dhanman_schemas::events::{Envelope, InvoiceVoided};
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

async fn pay(api: &Api, invoice_id: &str, amount: &str) -> Reply {
    api.post(
        "/v1/payments/manual",
        json!({"invoice_id": invoice_id, "amount": amount, "method": "cash"}),
    )
    .await
}

async fn void(api: &Api, invoice_id: &str, key: Option<&str>, body: Option<Value>) -> Reply {
    let mut request = api
        .http
        .post(format!("{}/v1/invoices/{invoice_id}/void", api.base));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    api.send(request).await
}

fn assert_conflict(reply: &Reply, names: &str) {
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(reply.body["error"], "conflict", "{}", reply.body);
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| m.contains(names)),
        "the message should name {names}: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_reverses_the_invoice_and_paid_void_or_foreign_invoices_are_refused() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Lakeview Residency").await;
    let (_, other_key) = create_org(&setup, "Hillside Towers").await;
    let api = Api::new(&setup.base_url(), &key);
    let other = Api::new(&setup.base_url(), &other_key);

    // Asha: one invoice paid in full, one to void, one left open.
    let asha = api.customer("Asha").await;
    let (paid, _) = invoice(&api, asha, "1000.00").await;
    let (voided, _) = invoice(&api, asha, "600.00").await;
    let (open, _) = invoice(&api, asha, "250.00").await;
    let payment = pay(&api, &paid, "1000.00").await;
    assert_eq!(payment.status, 201, "{}", payment.body);
    assert_eq!(payment.body["invoice_status"], "paid");
    let payment_token = payment.body["consistency_token"].as_str().unwrap();
    // Ravi: an invoice with part of it paid.
    let ravi = api.customer("Ravi").await;
    let (partial, partial_token) = invoice(&api, ravi, "500.00").await;
    let part = pay(&api, &partial, "200.00").await;
    assert_eq!(part.status, 201, "{}", part.body);
    assert_eq!(part.body["invoice_status"], "open");
    let part_token = part.body["consistency_token"].as_str().unwrap();

    // Refused, each with nothing written: paid, partly paid, another organization's
    // invoice, an unknown id, a path that is no id.
    let before = command_events(&db).await;
    assert_conflict(&void(&api, &paid, None, None).await, "status paid");
    assert_conflict(
        &void(&api, &partial, Some("void-partial"), None).await,
        "amount_paid 200.00",
    );
    let foreign = void(&other, &voided, None, Some(json!({"reason": "not yours"}))).await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(
        other.get(&format!("/v1/invoices/{voided}")).await.status,
        404
    );
    let unknown = void(&api, &Uuid::now_v7().to_string(), None, None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(void(&api, "not-an-id", None, None).await.status, 404);
    let unknown_field = void(&api, &voided, None, Some(json!({"why": "x"}))).await;
    assert_eq!(unknown_field.status, 422, "{}", unknown_field.body);
    assert_eq!(unknown_field.body["field"], "why");
    let long = void(
        &api,
        &voided,
        None,
        Some(json!({"reason": "x".repeat(501)})),
    )
    .await;
    assert_eq!(long.status, 422, "{}", long.body);
    assert_eq!(long.body["field"], "reason");
    assert_eq!(command_events(&db).await, before);
    assert_eq!(
        db.count("select count(*) from invoices where status = 'void'")
            .await,
        0
    );

    // The void: 200 with the invoice's new state and the event's id as the token.
    let first = void(
        &api,
        &voided,
        Some("void-asha-600"),
        Some(json!({"reason": "raised twice"})),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["invoice_id"], voided.as_str());
    assert_eq!(first.body["status"], "void");
    assert_eq!(first.body["void_reason"], "raised twice");
    assert_eq!(first.body["amount"], "600.00");
    assert_eq!(first.body["amount_paid"], "0.00");
    assert!(first.body["voided_at"].is_string(), "{}", first.body);
    let token = first.body["consistency_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(command_events(&db).await, before + 1);
    let (record, payload): (String, Value) =
        sqlx::query_as("select record_name, payload from outbox where event_id = $1::uuid")
            .bind(&token)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(record, "dhanman.sales.InvoiceVoided");
    assert_eq!(payload["amount"], "600.00", "{payload}");
    assert_eq!(payload["customer_id"], asha.to_string());

    // The same key and body: the first response again, nothing new. Anything else: 409.
    let replay = void(
        &api,
        &voided,
        Some("void-asha-600"),
        Some(json!({"reason": "raised twice"})),
    )
    .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body, first.body);
    assert_conflict(&void(&api, &voided, None, None).await, "status void");
    assert_conflict(
        &void(&api, &voided, Some("another-key"), None).await,
        "status void",
    );
    assert_conflict(
        &void(
            &api,
            &voided,
            Some("void-asha-600"),
            Some(json!({"reason": "changed my mind"})),
        )
        .await,
        "Idempotency-Key",
    );
    // A payment against the void invoice is refused too.
    assert_conflict(&pay(&api, &voided, "600.00").await, "void");
    assert_eq!(command_events(&db).await, before + 1);
    assert_eq!(
        db.count(&format!(
            "select count(*) from payments where invoice_id = '{voided}'"
        ))
        .await,
        0
    );

    // The ledger: Asha owes invoices - payments - voids = 1850 - 1000 - 600. The void's
    // event follows her invoices on their partition; Ravi's invoice may sit on another one
    // and the payments are on another topic, so those are waited for by their own tokens.
    for t in [payment_token, part_token, &partial_token] {
        let r = api
            .get(&format!("/v1/customers/{ravi}/balance?consistent_with={t}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let balance = api
        .get(&format!(
            "/v1/customers/{asha}/balance?consistent_with={token}"
        ))
        .await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    let inr = &balance.body["balances"][0];
    assert_eq!(inr["currency"], "INR", "{}", balance.body);
    assert_eq!(inr["invoiced"], "1850.00", "{}", balance.body);
    assert_eq!(inr["settled"], "1600.00", "{}", balance.body);
    assert_eq!(inr["balance"], "250.00", "{}", balance.body);

    let trial = api
        .get(&format!("/v1/trial-balance?consistent_with={token}"))
        .await;
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    // Bank 1200 + receivables 250 (Asha) + 300 (Ravi) = revenue 2350 - 600 voided.
    assert_eq!(inr["total_debit"], "1750.00", "{}", trial.body);
    let revenue = api.get("/v1/accounts/4000/balance").await;
    assert_eq!(revenue.body["balances"][0]["balance"], "1750.00");

    // The invoice's two entries: the posting and its reversal, under the void's event id.
    let entries = api
        .get(&format!(
            "/v1/ledger/entries?reference_id={voided}&consistent_with={token}"
        ))
        .await;
    assert_eq!(entries.status, 200, "{}", entries.body);
    let list = entries.body["entries"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", entries.body);
    let reversal = list
        .iter()
        .find(|e| e["reference_type"] == "invoice_void")
        .unwrap_or_else(|| panic!("no reversing entry: {}", entries.body));
    assert_eq!(reversal["source_event_id"], token.as_str());
    let lines: Vec<(String, String, String, Value)> = reversal["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["account_code"].as_str().unwrap().to_string(),
                l["debit"].as_str().unwrap().to_string(),
                l["credit"].as_str().unwrap().to_string(),
                l["party_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("4000".into(), "600.00".into(), "0.00".into(), Value::Null),
            ("1200".into(), "0.00".into(), "600.00".into(), json!(asha)),
        ]
    );

    // Each invoice as it stands.
    let show = |id: String| {
        let api = api.clone();
        let token = token.clone();
        async move {
            let r = api
                .get(&format!("/v1/invoices/{id}?consistent_with={token}"))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body
        }
    };
    let shown = show(paid.clone()).await;
    assert_eq!(
        (
            &shown["status"],
            &shown["amount_paid"],
            &shown["void_reason"]
        ),
        (&json!("paid"), &json!("1000.00"), &Value::Null)
    );
    let shown = show(voided.clone()).await;
    assert_eq!(
        (
            &shown["status"],
            &shown["amount_paid"],
            &shown["void_reason"]
        ),
        (&json!("void"), &json!("0.00"), &json!("raised twice"))
    );
    assert_eq!(shown["customer_id"], asha.to_string());
    assert_eq!(shown["currency"], "INR");
    assert_eq!(shown["due_date"], due_date().to_string());
    let shown = show(partial.clone()).await;
    assert_eq!(
        (&shown["status"], &shown["amount_paid"]),
        (&json!("open"), &json!("200.00"))
    );
    let shown = show(open.clone()).await;
    assert_eq!(shown["status"], "open");
    assert_eq!(
        api.get(&format!("/v1/invoices/{}", Uuid::now_v7()))
            .await
            .status,
        404
    );

    // No body at all is a void without a reason.
    let (bare, _) = invoice(&api, ravi, "75.00").await;
    let r = void(&api, &bare, None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["void_reason"], Value::Null);

    // An inactive resident gets no new invoices.
    sqlx::query("update customers set active = false where id = $1")
        .bind(ravi)
        .execute(&db.pool)
        .await
        .unwrap();
    let invoices = db.count("select count(*) from invoices").await;
    let refused = api
        .post(
            "/v1/invoices",
            json!({"customer_id": ravi, "amount": "10.00", "due_date": due_date()}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.body["field"], "customer_id", "{}", refused.body);
    assert_eq!(db.count("select count(*) from invoices").await, invoices);

    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_and_a_payment_racing_for_one_invoice_never_both_succeed() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Race Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Meera").await;

    for round in 0..8 {
        let (id, _) = invoice(&api, customer, "300.00").await;
        let (voiding, paying) = tokio::join!(
            void(&api, &id, None, Some(json!({"reason": "race"}))),
            pay(&api, &id, "300.00"),
        );
        let won = [voiding.status, paying.status];
        assert!(
            won == [200, 409] || won == [409, 201],
            "round {round}: void {} {}, payment {} {}",
            voiding.status,
            voiding.body,
            paying.status,
            paying.body
        );
        let (status, payments): (String, i64) = sqlx::query_as(
            "select status, (select count(*) from payments where invoice_id = $1)
               from invoices where id = $1",
        )
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let expected = if voiding.status == 200 {
            ("void", 0)
        } else {
            ("paid", 1)
        };
        assert_eq!((status.as_str(), payments), expected, "round {round}");
    }

    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_that_reverses_no_posted_invoice_in_full_is_dead_lettered_by_the_ledger() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, org) = api_with_org(&setup, "Void Check Society").await;
    let _relay = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let codec = setup.codec();
    let (asha, ravi) = (Uuid::now_v7(), Uuid::now_v7());
    let invoice = invoice_created(org, asha, "VC-1", "100.00");
    let later = invoice_created(org, asha, "VC-2", "30.00");
    let void = |invoice_id, customer_id, amount: &str, currency: &str| InvoiceVoided {
        envelope: Envelope::new(org, "void-check", None),
        invoice_id,
        customer_id,
        amount: amount.parse().unwrap(),
        currency: currency.into(),
        reason: "test".into(),
    };
    let good = void(invoice.invoice_id, asha, "100.00", "INR");
    // In this order: the invoice, four voids refused, the good void, a second void of the
    // same invoice, the good void again (a redelivery: applied once), a later invoice.
    let refused_first = [
        (
            "has no posted entry to void",
            void(Uuid::now_v7(), asha, "100.00", "INR"),
        ),
        (
            "customer_id: the void",
            void(invoice.invoice_id, ravi, "100.00", "INR"),
        ),
        (
            "amount: the void",
            void(invoice.invoice_id, asha, "50.00", "INR"),
        ),
        (
            "currency: the void",
            void(invoice.invoice_id, asha, "100.00", "USD"),
        ),
    ];
    let again = void(invoice.invoice_id, asha, "100.00", "INR");
    let mut records: Vec<(&str, Vec<u8>)> = vec![("", codec.encode(&invoice).await.unwrap())];
    for (why, bad) in &refused_first {
        records.push((why, codec.encode(bad).await.unwrap()));
    }
    records.push(("", codec.encode(&good).await.unwrap()));
    records.push(("was voided before", codec.encode(&again).await.unwrap()));
    records.push(("", codec.encode(&good).await.unwrap()));
    records.push(("", codec.encode(&later).await.unwrap()));
    // One key: one partition, in this order.
    let topic = setup.topic(topics::INVOICES);
    let key = asha.to_string();
    produce_all(
        &producer(),
        records
            .iter()
            .map(|(_, v)| (topic.clone(), key.as_str(), v.as_slice())),
    )
    .await;

    let refused: Vec<&str> = records
        .iter()
        .map(|(why, _)| *why)
        .filter(|why| !why.is_empty())
        .collect();
    let dead = read_topic(&setup.topic(&topics::dlq(topics::INVOICES)), refused.len()).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|r| r.header("dlq.error").unwrap_or_default().to_string())
        .collect();
    for why in &refused {
        let at = reasons
            .iter()
            .position(|r| r.contains(why))
            .unwrap_or_else(|| panic!("no dead letter for {why:?} among {reasons:?}"));
        reasons.remove(at);
    }
    db.wait_count(
        "the invoice after the voids to be posted",
        &format!(
            "select count(*) from journal_entries where reference_id = '{}'",
            later.invoice_id
        ),
        1,
        Duration::from_secs(60),
    )
    .await;
    // The invoice, its one void and the later invoice; nothing else.
    assert_eq!(
        db.count(&format!(
            "select count(*) from journal_entries where organization_id = '{org}'"
        ))
        .await,
        3
    );
    let (owed,): (Decimal,) = sqlx::query_as(
        "select debit_total - credit_total from party_balances
          where party_id = $1 and account_code = '1200'",
    )
    .bind(asha)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owed, "30.00".parse::<Decimal>().unwrap());
    assert_eq!(
        db.count(&format!(
            "select count(*) from party_balances where party_id = '{ravi}'"
        ))
        .await,
        0
    );
    db.drop_db().await;
}
