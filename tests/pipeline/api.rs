//! Bad input: every refusal is a 4xx with a JSON body naming the field, and nothing is
//! written (a body too large is refused with `Connection: close`, its rest never read). A
//! request that finds no database connection in time, or meets a deadlock or a
//! serialization failure, is a 503 to retry and writes nothing, not a 500. The edges of
//! HTTP (text after the JSON, a media type that is not JSON, a body declared too large, a
//! method the route does not take) are refused in JSON too. The API runs in-process,
//! served on a real socket.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

use crate::helpers::{assert_refused, org_key as org, serve_api as serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named_and_nothing_written() {
    let db = TestDb::new().await;
    let base = serve(&db).await;
    let api = Api::new(&base, &org(&db, "Input Society").await);
    let other = Api::new(&base, &org(&db, "Other Society").await);
    let customer = api.customer("Nisha").await;
    let foreign = other.customer("Someone Else").await;
    let valid = json!({"customer_id": customer, "amount": "100.00", "due_date": due_date(), "issue_date": "2026-12-01"});
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(key);
        body
    };

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("missing amount", without("amount"), 422, "amount"),
        (
            "missing customer",
            without("customer_id"),
            422,
            "customer_id",
        ),
        ("missing due date", without("due_date"), 422, "due_date"),
        (
            "customer id not a uuid",
            with("customer_id", json!("nope")),
            422,
            "customer_id",
        ),
        (
            "amount not a number",
            with("amount", json!("lots")),
            422,
            "amount",
        ),
        (
            "negative amount",
            with("amount", json!("-10.00")),
            422,
            "amount",
        ),
        ("zero amount", with("amount", json!("0")), 422, "amount"),
        (
            "over-precise amount",
            with("amount", json!("10.005")),
            422,
            "amount",
        ),
        (
            "too many digits",
            with("amount", json!("12345678901234567.00")),
            422,
            "amount",
        ),
        (
            "bad currency",
            with("currency", json!("rupees")),
            422,
            "currency",
        ),
        (
            "no currency",
            with("currency", json!("XXX")),
            422,
            "currency",
        ),
        (
            "bad date",
            with("due_date", json!("10/12/2026")),
            422,
            "due_date",
        ),
        (
            "due before issue",
            with("due_date", json!("2026-11-01")),
            422,
            "due_date",
        ),
        (
            "bad period",
            with("period", json!("December")),
            422,
            "period",
        ),
        (
            "unknown customer",
            with("customer_id", json!(Uuid::now_v7())),
            422,
            "customer_id",
        ),
        (
            "another organization's customer",
            with("customer_id", json!(foreign)),
            422,
            "customer_id",
        ),
        ("unknown field", with("amout", json!("1.00")), 422, "amout"),
    ];
    for (what, body, status, field) in cases {
        let reply = api.post("/v1/invoices", body).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_refused(&reply, status, field);
    }

    // Malformed JSON, a body that is not an object, a wrong content type, a huge body.
    let raw = |body: &'static str| {
        api.http
            .post(format!("{base}/v1/invoices"))
            .header("content-type", "application/json")
            .body(body)
    };
    assert_refused(&api.send(raw("{\"amount\": ")).await, 400, "body");
    assert_refused(&api.send(raw("[1, 2]")).await, 422, "body");
    let text = api
        .http
        .post(format!("{base}/v1/invoices"))
        .body("amount=5");
    assert_refused(&api.send(text).await, 415, "Content-Type");
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(200_000));
    let big = api
        .http
        .post(format!("{base}/v1/invoices"))
        .header("content-type", "application/json")
        .body(huge);
    let too_large = api.send(big).await;
    assert_refused(&too_large, 413, "body");
    // The unread rest of the body leaves the connection unusable: the client is told so.
    assert_eq!(
        too_large.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );

    // Payments: over-precise and unknown invoice.
    assert_refused(
        &api.post(
            "/v1/payments/manual",
            json!({"customer_id": customer, "amount": "1.001"}),
        )
        .await,
        422,
        "amount",
    );
    assert_refused(
        &api.post(
            "/v1/payments/manual",
            json!({"invoice_id": Uuid::now_v7(), "amount": "1.00"}),
        )
        .await,
        422,
        "invoice_id",
    );
    assert_refused(
        &api.post("/v1/customers", json!({"email": "x@example.org"}))
            .await,
        422,
        "name",
    );

    // Authentication and tenancy.
    let anonymous = Api::new(&base, "not-a-key");
    assert_refused(
        &anonymous.post("/v1/invoices", valid.clone()).await,
        401,
        "Authorization",
    );
    let none = reqwest::Client::new()
        .get(format!("{base}/v1/trial-balance"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let theirs = api.get(&format!("/v1/customers/{foreign}/balance")).await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    assert_eq!(
        api.get("/v1/customers/not-a-uuid/balance").await.status,
        404
    );
    assert_eq!(api.get("/v1/accounts/9999/balance").await.status, 404);
    assert_refused(&api.get("/v1/ledger/entries").await, 422, "reference_id");
    assert_refused(
        &api.get("/v1/ledger/entries?reference_id=x").await,
        422,
        "reference_id",
    );
    assert_refused(
        &api.get(&format!(
            "/v1/trial-balance?consistent_with={}",
            Uuid::now_v7()
        ))
        .await,
        409,
        "consistent_with",
    );

    // Nothing of the refused requests was written.
    assert_eq!(db.count("select count(*) from invoices").await, 0);
    assert_eq!(db.count("select count(*) from payments").await, 0);
    let users = "select count(*) from outbox where record_name = 'dhanman.common.UserCreated'";
    let created_users = db.count(users).await;
    assert_eq!(db.count("select count(*) from outbox").await, created_users);

    // And the valid request still works, with a correlation id created when absent.
    let ok = api.post("/v1/invoices", valid).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert!(ok.headers.contains_key("x-correlation-id"));
    // Its `InvoiceCreated` and the first email issued with it.
    assert_eq!(
        db.count("select count(*) from outbox").await,
        created_users + 2
    );
    db.drop_db().await;
}

/// The edges of HTTP: a body is one JSON value and nothing after it (400 `body`); JSON is
/// `application/json` in any case, in UTF-8 only (else 415 `Content-Type`); a body declared
/// larger than the limit is refused at once, before a client asking `Expect:
/// 100-continue` is told to send it (413 `body`); a method the route does not take is a
/// 405 naming `method`, with `Allow`. Every one of them a JSON body, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_of_http_are_refused_in_json_naming_their_part() {
    let db = TestDb::new().await;
    let base = serve(&db).await;
    let key = org(&db, "Edge Society").await;
    let api = Api::new(&base, &key);
    let customers = "select count(*) from customers";
    let before = db.count(customers).await;
    let post = |content_type: &'static str, body: &'static str| {
        api.http
            .post(format!("{base}/v1/customers"))
            .header("content-type", content_type)
            .body(body)
    };
    for body in [r#"{"name": "One"}{"name": "Two"}"#, r#"{"name": "One"} x"#] {
        assert_refused(&api.send(post("application/json", body)).await, 400, "body");
    }
    for content_type in ["application/jsonx", "application/json; charset=utf-16"] {
        let reply = api.send(post(content_type, r#"{"name": "One"}"#)).await;
        assert_refused(&reply, 415, "Content-Type");
    }
    assert_eq!(db.count(customers).await, before, "nothing written");
    let upper = api
        .send(post(
            "APPLICATION/JSON; Charset=\"UTF-8\"",
            r#"{"name": "Upper"}"#,
        ))
        .await;
    assert_eq!(upper.status, 201, "{}", upper.body);

    let put = api.send(api.http.put(format!("{base}/v1/invoices"))).await;
    assert_refused(&put, 405, "method");
    assert_eq!(
        put.headers.get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );

    // Only the headers, declaring 11 MB and asking to be told to send them: the answer is
    // the refusal, not `100 Continue`.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 11000000\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // Until the head and the whole JSON body are in.
    while !String::from_utf8_lossy(&answer).trim_end().ends_with('}') {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer before the request's time runs out")
            .unwrap();
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    assert_eq!(db.count(customers).await, before + 1);
    db.drop_db().await;
}

/// A 503 to retry in a second, as the API answers a transient database failure.
fn assert_busy(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["error"], "busy", "{}", reply.body);
    assert_eq!(reply.headers["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_meets_a_transient_database_failure_is_a_503_to_retry() {
    let db = TestDb::new().await;
    let key = org(&db, "Busy Society").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&db.url)
        .await
        .unwrap();
    let base = serve_state(dhanman_api::AppState::new(
        pool.clone(),
        Duration::from_millis(300),
    ))
    .await;
    let api = Api::new(&base, &key);
    let customer = api.customer("Meera").await;

    // The pool's one connection held: neither the balance nor the key (when not cached) can
    // be read in time.
    let held = pool.acquire().await.unwrap();
    assert_busy(&api.get(&format!("/v1/customers/{customer}/balance")).await);
    let kiran = json!({"name": "Kiran", "email": "k@example.org"});
    assert_busy(&api.post("/v1/customers", kiran.clone()).await);

    drop(held);
    let answered = api.get(&format!("/v1/customers/{customer}/balance")).await;
    assert_eq!(answered.status, 200, "{}", answered.body);

    // A deadlock or a serialization failure, as Postgres reports them, is the database's
    // moment too: 503, the transaction rolled back.
    sqlx::raw_sql(
        "create function fail_transiently() returns trigger language plpgsql as $$
         begin
           if new.name = 'Deadlock' then
             raise exception 'deadlock detected' using errcode = '40P01';
           elsif new.name = 'Serialization' then
             raise exception 'could not serialize access' using errcode = '40001';
           end if;
           return new;
         end $$;
         create trigger fail_transiently before insert on customers
           for each row execute function fail_transiently();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for name in ["Deadlock", "Serialization"] {
        let body = json!({"name": name, "email": "d@example.org"});
        assert_busy(&api.post("/v1/customers", body).await);
    }
    let after = api.post("/v1/customers", kiran).await;
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(
        db.count(
            "select count(*) from customers where name in ('Kiran', 'Deadlock', 'Serialization')"
        )
        .await,
        1,
        "the refused commands wrote nothing"
    );
    db.drop_db().await;
}
