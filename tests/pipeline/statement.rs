//! A customer's statement and the trial balance by account type, over real sockets
//! against `dhanman up`: receivable lines in order with a running balance that ends at
//! the customer's balance, read in pages that carry the balance from one to the next, an
//! opening balance for a later `from`, bad dates refused by name, another organization's
//! customer unknown; a reference's ledger entries one page at a time.

use chrono::{Duration, Utc};
use dhanman_schemas::events::{Envelope, InvoiceCreated, Record};
use dhanman_schemas::topics;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn token(reply: &Reply) -> String {
    reply.body["consistency_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {}", reply.body))
        .to_string()
}

/// (reference_type, debit, credit, balance) of each line of a statement's currency.
fn lines(currency: &Value) -> Vec<(String, String, String, String)> {
    currency["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_string();
            (s("reference_type"), s("debit"), s("credit"), s("balance"))
        })
        .collect()
}

fn line(kind: &str, debit: &str, credit: &str, balance: &str) -> (String, String, String, String) {
    (kind.into(), debit.into(), credit.into(), balance.into())
}

fn assert_invalid(reply: &Reply, field: &str) {
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["field"], field, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_runs_to_the_balance_and_the_trial_balance_groups_by_type() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Statement Heights").await;
    let (_, other_key) = create_org(&setup, "Other Enclave").await;
    let api = Api::new(&setup.base_url(), &key);
    let other = Api::new(&setup.base_url(), &other_key);
    let asha = api.customer("Asha").await;
    let ravi = api.customer("Ravi").await;

    // An invoice from ten days ago, straight onto the topic: commands are always "now",
    // and the statement's dates are the ledger's `occurred_at`.
    let mut old = InvoiceCreated {
        envelope: Envelope::new(org, "statement-backdated", None),
        invoice_id: Uuid::now_v7(),
        customer_id: asha,
        invoice_number: "OLD-1".into(),
        amount: "400.00".parse().unwrap(),
        currency: "INR".into(),
        issue_date: "2026-11-01".parse().unwrap(),
        due_date: "2026-11-10".parse().unwrap(),
        description: None,
        period: None,
        tax_amount: None,
    };
    old.envelope.occurred_at -= Duration::days(10);
    let encoded = setup
        .codec()
        .encode_json(
            InvoiceCreated::NAME,
            2,
            &serde_json::to_value(&old).unwrap(),
        )
        .await
        .unwrap();
    produce(
        &producer(),
        &setup.topic(topics::INVOICES),
        &old.key(),
        &encoded,
    )
    .await;

    // Today: two invoices, the first paid, the second void; Ravi's invoice stays off
    // Asha's statement.
    let (paid, t1) = invoice(&api, asha, "1000.00").await;
    let (voided, t2) = invoice(&api, asha, "600.00").await;
    let payment = api
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": paid, "amount": "1000.00", "method": "cash"}),
        )
        .await;
    assert_eq!(payment.status, 201, "{}", payment.body);
    let void = api
        .post(&format!("/v1/invoices/{voided}/void"), json!({}))
        .await;
    assert_eq!(void.status, 200, "{}", void.body);
    let (_, t3) = invoice(&api, ravi, "300.00").await;
    let statement = |query: String| {
        let api = api.clone();
        async move {
            api.get(&format!("/v1/customers/{asha}/statement{query}"))
                .await
        }
    };
    for t in [
        old.envelope.event_id.to_string(),
        t1,
        t2,
        token(&payment),
        token(&void),
        t3,
    ] {
        let r = statement(format!("?consistent_with={t}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // The whole history: opening zero, each line in order, closing = the balance query.
    let all = statement(String::new()).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.body["customer_id"], asha.to_string());
    assert_eq!(all.body["from"], Value::Null);
    let currencies = all.body["currencies"].as_array().unwrap();
    assert_eq!(currencies.len(), 1, "{}", all.body);
    let inr = &currencies[0];
    assert_eq!(inr["currency"], "INR");
    assert_eq!(inr["opening_balance"], "0.00");
    assert_eq!(
        lines(inr),
        vec![
            line("invoice", "400.00", "0.00", "400.00"),
            line("invoice", "1000.00", "0.00", "1400.00"),
            line("invoice", "600.00", "0.00", "2000.00"),
            line("payment", "0.00", "1000.00", "1000.00"),
            line("invoice_void", "0.00", "600.00", "400.00"),
        ],
        "{}",
        all.body
    );
    let first = &inr["lines"][0];
    assert_eq!(first["reference_id"], old.invoice_id.to_string());
    assert_eq!(first["currency"], "INR");
    assert!(first["description"].is_string(), "{}", all.body);
    assert_eq!(inr["lines"][1]["reference_id"], paid.as_str());
    assert_eq!(inr["closing_balance"], "400.00");
    let balance = api.get(&format!("/v1/customers/{asha}/balance")).await;
    assert_eq!(
        balance.body["balances"][0]["balance"], inr["closing_balance"],
        "{}",
        balance.body
    );

    // In pages of two lines: the same lines in order, each page opening at the balance the
    // page before closed on.
    let mut paged = Vec::new();
    let mut carried = "0.00".to_string();
    let mut query = "?limit=2".to_string();
    loop {
        let page = statement(query.clone()).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let inr = &page.body["currencies"][0];
        assert_eq!(inr["opening_balance"], carried.as_str(), "{}", page.body);
        paged.extend(lines(inr));
        carried = inr["closing_balance"].as_str().unwrap().to_string();
        match page.body["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, lines(&all.body["currencies"][0]));
    assert_eq!(carried, "400.00");
    // The voided invoice's entries one at a time: the invoice, then its void.
    let entries = |after: Option<&str>| {
        let api = api.clone();
        let query = match after {
            Some(cursor) => {
                format!("/v1/ledger/entries?reference_id={voided}&limit=1&after={cursor}")
            }
            None => format!("/v1/ledger/entries?reference_id={voided}&limit=1"),
        };
        async move { api.get(&query).await }
    };
    let first = entries(None).await;
    assert_eq!(
        first.body["entries"][0]["reference_type"], "invoice",
        "{}",
        first.body
    );
    let second = entries(first.body["next"].as_str()).await;
    assert_eq!(
        second.body["entries"][0]["reference_type"], "invoice_void",
        "{}",
        second.body
    );
    assert!(second.body["next"].is_null(), "{}", second.body);

    // From five days ago: the old invoice is the opening balance. Up to five days ago:
    // only the old invoice.
    let cut = (Utc::now() - Duration::days(5)).date_naive().to_string();
    let later = statement(format!("?from={cut}")).await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.body["from"], cut.as_str());
    let inr = &later.body["currencies"][0];
    assert_eq!(inr["opening_balance"], "400.00", "{}", later.body);
    assert_eq!(inr["lines"].as_array().unwrap().len(), 4, "{}", later.body);
    assert_eq!(inr["lines"][0]["balance"], "1400.00", "{}", later.body);
    assert_eq!(inr["closing_balance"], "400.00", "{}", later.body);
    let earlier = statement(format!("?to={cut}")).await;
    assert_eq!(earlier.status, 200, "{}", earlier.body);
    let inr = &earlier.body["currencies"][0];
    assert_eq!(
        lines(inr),
        vec![line("invoice", "400.00", "0.00", "400.00")],
        "{}",
        earlier.body
    );
    assert_eq!(inr["closing_balance"], "400.00", "{}", earlier.body);

    // Bad dates name their field; another organization's or an unknown customer is 404.
    assert_invalid(&statement("?from=2026-13-01".into()).await, "from");
    assert_invalid(&statement("?to=yesterday".into()).await, "to");
    assert_invalid(
        &statement("?from=2026-12-02&to=2026-12-01".into()).await,
        "from",
    );
    let foreign = other.get(&format!("/v1/customers/{asha}/statement")).await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    let unknown = api
        .get(&format!("/v1/customers/{}/statement", Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // Trial balance by type: assets are bank 1000 + receivables 400 (Asha) + 300 (Ravi),
    // revenue 400 + 1000 + 600 - 600 + 300; the existing fields are unchanged.
    let trial = api.get("/v1/trial-balance").await;
    assert_eq!(trial.status, 200, "{}", trial.body);
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    assert_eq!(inr["total_debit"], "1700.00", "{}", trial.body);
    let by_type = inr["by_type"].as_array().unwrap();
    let of = |t: &str| {
        by_type
            .iter()
            .find(|x| x["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {}", trial.body))
    };
    let account_debit = |code: &str| -> rust_decimal::Decimal {
        inr["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account_code"] == code)
            .unwrap_or_else(|| panic!("no account {code}: {}", trial.body))["debit"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let asset = of("asset");
    assert_eq!(asset["debit"], "1700.00", "{}", trial.body);
    assert_eq!(
        asset["debit"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        account_debit("1000") + account_debit("1200")
    );
    assert_eq!(asset["balance"], "1700.00", "{}", trial.body);
    let revenue = of("revenue");
    assert_eq!(revenue["credit"], "1700.00", "{}", trial.body);
    assert_eq!(revenue["balance"], "1700.00", "{}", trial.body);
    let sum = |k: &str| -> rust_decimal::Decimal {
        by_type
            .iter()
            .map(|x| {
                x[k].as_str()
                    .unwrap()
                    .parse::<rust_decimal::Decimal>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(sum("debit"), sum("credit"), "{}", trial.body);
    assert_eq!(sum("debit").to_string(), "1700.00");

    drop(up);
    db.drop_db().await;
}
