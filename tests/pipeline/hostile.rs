//! Hostile input against the running API: what an attacker sends is refused with a 4xx
//! naming the field, never a 500, never a panic, never a new metric series.

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
/// address, a period that is no month. Each is a 422 naming the field, and nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_422_naming_the_field_and_write_nothing() {
    use serde_json::json;

    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let api = Api::new(&base, &org_key(&db, "Hostile Society").await);
    let customer = api.customer("Nisha").await;
    let invoice = json!({"customer_id": customer, "amount": "100.00",
                         "due_date": "2026-12-10", "issue_date": "2026-12-01"});
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
            "/v1/customers",
            json!({"name": "Asha", "email": "@"}),
            "email",
        ),
        ("/v1/customers", json!({"name": "Asha\u{0}"}), "name"),
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
    db.drop_db().await;
}
