//! Salaries over real sockets against `dhanman up`: posted salaries reach the ledger as
//! Salary Expense against Salaries Payable, a second salary for the same employee and
//! period is refused with nothing written, retries replay, bad input names its field.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

async fn post_salary(api: &Api, key: Option<&str>, body: Value) -> Reply {
    let mut request = api
        .http
        .post(format!("{}/v1/salaries", api.base))
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    api.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salaries_post_expense_against_payable_once_per_employee_and_period() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Palm Grove Society").await;
    let (_, other_key) = create_org(&setup, "Cedar Heights").await;
    let api = Api::new(&setup.base_url(), &key);
    let other = Api::new(&setup.base_url(), &other_key);

    // Two employees, one salary each for November.
    let (guard, gardener) = (Uuid::now_v7(), Uuid::now_v7());
    let guard_body = json!({"employee_id": guard, "employee_name": "Suresh (guard)",
                            "period": "2026-11", "amount": "25000.00"});
    let first = post_salary(&api, Some("salary-suresh-2026-11"), guard_body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["employee_id"], guard.to_string());
    assert_eq!(first.body["employee_name"], "Suresh (guard)");
    assert_eq!(first.body["period"], "2026-11");
    assert_eq!(first.body["amount"], "25000.00");
    assert_eq!(first.body["currency"], "INR");
    let salary_id = first.body["salary_id"].as_str().unwrap().to_string();
    let first_token = first.body["consistency_token"]
        .as_str()
        .unwrap()
        .to_string();
    let second = post_salary(
        &api,
        None,
        json!({"employee_id": gardener, "employee_name": "Lakshmi", "period": "2026-11",
               "amount": "18500.50", "currency": "INR"}),
    )
    .await;
    assert_eq!(second.status, 201, "{}", second.body);
    let second_token = second.body["consistency_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (record, payload): (String, Value) =
        sqlx::query_as("select record_name, payload from outbox where event_id = $1::uuid")
            .bind(&first_token)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(record, "dhanman.payroll.SalaryPosted");
    assert_eq!(payload["salary_id"], salary_id.as_str(), "{payload}");
    assert_eq!(payload["amount"], "25000.00", "{payload}");

    // A retry with the same key and body: the first response, nothing new.
    let before = command_events(&db).await;
    let replay = post_salary(&api, Some("salary-suresh-2026-11"), guard_body.clone()).await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body, first.body);
    // The same employee and period again, with or without another key: 409 naming the
    // period, nothing written.
    for key in [None, Some("salary-suresh-again")] {
        let again = post_salary(&api, key, guard_body.clone()).await;
        assert_eq!(again.status, 409, "{}", again.body);
        assert_eq!(again.body["error"], "conflict", "{}", again.body);
        assert!(
            again.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("period")),
            "the message should name the period: {}",
            again.body
        );
    }
    // Neither the replay nor the refusals wrote anything.
    assert_eq!(command_events(&db).await, before);
    assert_eq!(db.count("select count(*) from salaries").await, 2);

    // Bad input: 422 naming the field, nothing written.
    let valid = json!({"employee_id": guard, "employee_name": "Suresh",
                       "period": "2026-12", "amount": "25000.00"});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    for (body, field) in [
        (without("employee_id"), "employee_id"),
        (with("employee_id", json!("not-a-uuid")), "employee_id"),
        (without("employee_name"), "employee_name"),
        (with("employee_name", json!("  ")), "employee_name"),
        (without("period"), "period"),
        (with("period", json!("2026-13")), "period"),
        (with("period", json!("2026-1")), "period"),
        (with("period", json!("Nov 2026")), "period"),
        (without("amount"), "amount"),
        (with("amount", json!("0")), "amount"),
        (with("amount", json!("-10.00")), "amount"),
        (with("amount", json!("100.005")), "amount"),
        (with("currency", json!("inr")), "currency"),
        (with("currency", json!("RUPEES")), "currency"),
        (with("bonus", json!("1")), "bonus"),
    ] {
        let r = post_salary(&api, None, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.body["field"], field, "{body}: {}", r.body);
    }
    assert_eq!(command_events(&db).await, before);
    assert_eq!(db.count("select count(*) from salaries").await, 2);

    // The ledger: expense and payable both carry the sum. The two salaries may sit on
    // different partitions, so each token is waited for.
    let r = api
        .get(&format!(
            "/v1/accounts/5100/balance?consistent_with={first_token}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expense = api
        .get(&format!(
            "/v1/accounts/5100/balance?consistent_with={second_token}"
        ))
        .await;
    assert_eq!(expense.status, 200, "{}", expense.body);
    let inr = &expense.body["balances"][0];
    assert_eq!(inr["currency"], "INR", "{}", expense.body);
    assert_eq!(inr["debit_total"], "43500.50", "{}", expense.body);
    assert_eq!(inr["balance"], "43500.50", "{}", expense.body);
    let payable = api.get("/v1/accounts/2200/balance").await;
    let inr = &payable.body["balances"][0];
    assert_eq!(inr["credit_total"], "43500.50", "{}", payable.body);
    assert_eq!(inr["debit_total"], "0.00", "{}", payable.body);
    assert_eq!(inr["balance"], "43500.50", "{}", payable.body);
    let trial = api.get("/v1/trial-balance").await;
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    assert_eq!(inr["total_debit"], "43500.50", "{}", trial.body);

    // The salary's one entry: expense debited, the employee's payable credited.
    let entries = api
        .get(&format!("/v1/ledger/entries?reference_id={salary_id}"))
        .await;
    assert_eq!(entries.status, 200, "{}", entries.body);
    let list = entries.body["entries"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", entries.body);
    assert_eq!(list[0]["reference_type"], "salary");
    assert_eq!(list[0]["source_event_id"], first_token.as_str());
    let lines: Vec<(String, String, String, Value, Value)> = list[0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["account_code"].as_str().unwrap().to_string(),
                l["debit"].as_str().unwrap().to_string(),
                l["credit"].as_str().unwrap().to_string(),
                l["party_type"].clone(),
                l["party_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (
                "5100".into(),
                "25000.00".into(),
                "0.00".into(),
                Value::Null,
                Value::Null
            ),
            (
                "2200".into(),
                "0.00".into(),
                "25000.00".into(),
                json!("employee"),
                json!(guard)
            ),
        ]
    );

    // The salary as stored; another organization's key and unknown ids see nothing.
    let shown = api.get(&format!("/v1/salaries/{salary_id}")).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let mut posted = first.body.clone();
    posted.as_object_mut().unwrap().remove("consistency_token");
    assert_eq!(shown.body, posted);
    let foreign = other.get(&format!("/v1/salaries/{salary_id}")).await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(
        api.get(&format!("/v1/salaries/{}", Uuid::now_v7()))
            .await
            .status,
        404
    );
    assert_eq!(api.get("/v1/salaries/not-an-id").await.status, 404);
    // The other organization may post for the same employee and period: the rule is per
    // organization.
    let theirs = post_salary(&other, None, guard_body).await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);

    drop(up);
    db.drop_db().await;
}
