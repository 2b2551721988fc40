//! `POST /v1/invoices/batch` against `dhanman up`: each item is judged on its own (a bad
//! amount, an unknown customer, an unknown field, a non-object: 422 naming
//! `invoices[i].<field>`; a number taken earlier in the batch or before it: 409), the
//! others are created with their events and first emails, in order, and the ledger posts
//! them; the same `Idempotency-Key` answers the same bytes and creates nothing; an empty
//! or oversized batch is refused whole, naming `invoices` (422) or the body (413); a large
//! batch's stored response is compressed with lz4. Hostile items (nested 20,000 deep, a
//! deep value in a known field, a field given twice) are each a 422 of their own, beside
//! good items created. The largest amount an invoice takes, 150 times for one customer, is
//! posted in full: the balances' totals hold sums past 10^18.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

async fn batch(api: &Api, key: Option<&str>, body: &Value) -> Reply {
    let mut request = api
        .http
        .post(format!("{}/v1/invoices/batch", api.base))
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    api.send(request).await
}

fn item(customer: Uuid, amount: &str, number: Option<&str>) -> Value {
    let mut v = json!({"customer_id": customer, "amount": amount,
                       "issue_date": "2026-12-01", "due_date": due_date()});
    if let Some(n) = number {
        v["invoice_number"] = json!(n);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_judges_each_invoice_alone_and_is_one_command() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Elm Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let bela = api.customer("Bela").await;
    let (_, earlier) = invoice(&api, asha, "10.00").await;
    ledger_applied(&api, &earlier).await;
    let taken = api
        .post("/v1/invoices", item(bela, "5.00", Some("ELM-TAKEN")))
        .await;
    assert_eq!(taken.status, 201, "{}", taken.body);

    let body = json!({"invoices": [
        item(asha, "100.00", None),
        item(bela, "200.50", Some("ELM-1")),
        item(asha, "-5", None),
        item(Uuid::now_v7(), "1.00", None),
        item(bela, "3.00", Some("ELM-1")),
        {"customer_id": asha, "amount": "1", "due_date": due_date(), "colour": "red"},
        "not an invoice",
        item(asha, "7.00", Some("ELM-TAKEN")),
        item(bela, "0.01", None),
    ]});
    let r = batch(&api, Some("elm-batch-1"), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let outcome: Vec<(u64, u64, Option<&str>)> = results
        .iter()
        .map(|x| {
            (
                x["index"].as_u64().unwrap(),
                x["status"].as_u64().unwrap(),
                x["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        vec![
            (0, 201, None),
            (1, 201, None),
            (2, 422, Some("invoices[2].amount")),
            (3, 422, Some("invoices[3].customer_id")),
            (4, 409, Some("invoices[4].invoice_number")),
            (5, 422, Some("invoices[5].colour")),
            (6, 422, Some("invoices[6]")),
            (7, 409, Some("invoices[7].invoice_number")),
            (8, 201, None),
        ],
        "{}",
        r.body
    );
    assert_eq!(
        (&r.body["created"], &r.body["failed"]),
        (&json!(3), &json!(6))
    );
    assert_eq!(results[1]["invoice"]["invoice_number"], "ELM-1");
    assert_eq!(results[1]["invoice"]["amount"], "200.50");

    // Each created invoice has its event and its first email, in the items' order.
    let created: Vec<String> = [0, 1, 8]
        .iter()
        .map(|&i| {
            results[i]["invoice"]["invoice_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let events: Vec<(String, String)> = sqlx::query_as(
        "select record_name, payload->>'invoice_id' from outbox
          where payload->>'invoice_id' = any($1) order by id",
    )
    .bind(&created)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = ["InvoiceCreated", "SendInvoiceEmail"]
        .iter()
        .flat_map(|kind| {
            let prefix = if *kind == "InvoiceCreated" {
                "dhanman.sales."
            } else {
                "dhanman.notification."
            };
            created
                .iter()
                .map(move |id| (format!("{prefix}{kind}"), id.clone()))
        })
        .collect();
    assert_eq!(events, expected);

    // The ledger posts them.
    let last = results[8]["invoice"]["consistency_token"].as_str().unwrap();
    ledger_applied(&api, last).await;
    let balance = api
        .get(&format!(
            "/v1/customers/{bela}/balance?consistent_with={}",
            results[1]["invoice"]["consistency_token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        balance.body["balances"][0]["balance"], "205.51",
        "{}",
        balance.body
    );

    // The same key: the same answer, nothing new.
    let invoices = db.count("select count(*) from invoices").await;
    let again = batch(&api, Some("elm-batch-1"), &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.text, r.text,
        "the same bytes: the response stored is the one answered"
    );
    assert_eq!(db.count("select count(*) from invoices").await, invoices);

    // Refused whole: empty, too many, not a list, too large a body.
    for (body, field) in [
        (json!({"invoices": []}), "invoices"),
        (json!({}), "invoices"),
        (
            json!({"invoices": vec![item(asha, "1", None); 1001]}),
            "invoices",
        ),
        (json!({"invoices": {"a": 1}}), "invoices"),
    ] {
        let r = batch(&api, None, &body).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["field"], field, "{}", r.body);
    }
    let huge = json!({"invoices": [{"description": "x".repeat(1024 * 1024)}]});
    let r = batch(&api, None, &huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(db.count("select count(*) from invoices").await, invoices);

    // A large batch's stored response (hundreds of bytes an item) is compressed with lz4.
    let large = json!({"invoices": vec![item(bela, "2.00", None); 100]});
    let r = batch(&api, Some("elm-batch-large"), &large).await;
    assert_eq!(
        (r.status, &r.body["created"]),
        (200, &json!(100)),
        "{}",
        r.body
    );
    let compression: Option<String> = sqlx::query_scalar(
        "select pg_column_compression(response_body) from idempotency_keys
          where idempotency_key = 'elm-batch-large'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        compression.as_deref(),
        Some("lz4"),
        "{} bytes",
        r.text.len()
    );
    drop(up);
    db.drop_db().await;
}

/// A batch's items as sent, hostile ones included: each is judged alone and none turns into
/// a 500. An item nested 20,000 deep is not an object; a deep value in a known field names
/// that field; a field given twice names the item; the good items are still created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_items_are_each_refused_alone() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let api = Api::new(&base, &org_key(&db, "Hostile Heights").await);
    let asha = api.customer("Asha").await;
    let good = item(asha, "10.00", None).to_string();
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let due = due_date();
    let body = format!(
        r#"{{"invoices": [{good}, {deep}, {{"customer_id": "{asha}", "amount": "1", "due_date": "{due}", "description": {deep}}}, {{"customer_id": "{asha}", "customer_id": "{asha}", "amount": "1", "due_date": "{due}"}}, {good}]}}"#
    );
    let request = api
        .http
        .post(format!("{base}/v1/invoices/batch"))
        .header("content-type", "application/json")
        .body(body);
    let r = api.send(request).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome: Vec<(u64, Option<&str>)> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["status"].as_u64().unwrap(), x["field"].as_str()))
        .collect();
    assert_eq!(
        outcome,
        vec![
            (201, None),
            (422, Some("invoices[1]")),
            (422, Some("invoices[2].description")),
            (422, Some("invoices[3]")),
            (201, None),
        ],
        "{}",
        r.body
    );
    assert_eq!(db.count("select count(*) from invoices").await, 2);
    db.drop_db().await;
}

/// 150 invoices of the largest amount an invoice takes, for one customer: every one is
/// posted, and the customer's balance, the receivable's and the trial balance are exact.
/// The balances' totals once stopped at 10^18: the ledger dead-lettered the postings past
/// it, and the invoices stood without their entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_amounts_post_in_full_past_ten_to_the_eighteenth() {
    const LARGEST: &str = "9999999999999999.99";
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Vast Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let body = json!({"invoices": vec![item(asha, LARGEST, None); 150]});
    let r = batch(&api, Some("vast-batch"), &body).await;
    assert_eq!(
        (r.status, &r.body["created"]),
        (200, &json!(150)),
        "{}",
        r.body
    );
    let token = r.body["results"][149]["invoice"]["consistency_token"]
        .as_str()
        .unwrap();
    let trial = ledger_applied(&api, token).await;

    let total = (LARGEST.parse::<rust_decimal::Decimal>().unwrap()
        * rust_decimal::Decimal::from(150))
    .to_string();
    assert_eq!(total, "1499999999999999998.50");
    let inr = &trial["currencies"][0];
    assert_eq!(
        (&inr["balanced"], &inr["total_debit"]),
        (&json!(true), &json!(total)),
        "{trial}"
    );
    let balance = api.get(&format!("/v1/customers/{asha}/balance")).await;
    assert_eq!(
        balance.body["balances"][0]["balance"], total,
        "{}",
        balance.body
    );
    let receivable = api.get("/v1/accounts/1200/balance").await;
    assert_eq!(
        receivable.body["balances"][0]["balance"], total,
        "{}",
        receivable.body
    );
    assert_eq!(
        db.count("select count(*) from journal_entries where reference_type = 'invoice'")
            .await,
        150,
        "every invoice has its entry"
    );
    drop(up);
    db.drop_db().await;
}
