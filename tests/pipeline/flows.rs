//! Every business flow in one organization, against `dhanman up` and a gateway process:
//! monthly invoices, a manual invoice, payments through the saga (one declined) and by
//! hand, a void, a salary, a purchase order approved by manager and CFO, and bills. After
//! all of them the books must agree with the command side: the trial balance nets to zero,
//! and each customer's receivable equals invoices minus payments minus voids.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;
use crate::monthly::run_job;
use crate::payments::{Gateway, assert_books_agree, pay, spawn_up, up_env};

fn token(body: &Value) -> String {
    body["consistency_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no consistency_token in {body}"))
        .to_string()
}

fn money(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not money: {v}"))
        .parse()
        .unwrap()
}

/// A user and the key they got by accepting their invitation (the administrator's answer
/// holds none).
async fn user(db: &TestDb, admin: &Api, email: &str, role: &str) -> (Api, String) {
    let invited = crate::keys::invite(db, admin, email, email, role).await;
    (invited.api, invited.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_flow_the_books_agree_with_the_commands() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let gateway = Gateway::start(&setup).await;
    let up = spawn_up(&setup, &up_env(&gateway));
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Sunrise Enclave").await;
    let admin = Api::new(&setup.base_url(), &key);
    let mut tokens = Vec::new();

    // Residents with a monthly charge, billed by the job; one more without.
    let mut residents = Vec::new();
    for (name, charge) in [
        ("Anil", "2500.00"),
        ("Bela", "3100.50"),
        ("Chirag", "1800.25"),
    ] {
        let r = admin
            .post(
                "/v1/customers",
                json!({"name": name, "unit": name, "monthly_charge": charge}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        residents.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let dev = admin.customer("Devika").await;
    let job = run_job(
        &setup,
        &["--period", "2026-12", "--organization", &org.to_string()],
    )
    .await;
    assert_eq!(job.code, Some(0), "{}", job.stderr);
    assert_eq!(job.summary["created"], 3, "{}", job.summary);
    let monthly: BTreeMap<Uuid, String> = sqlx::query_as::<_, (Uuid, Uuid)>(
        "select customer_id, invoice_id from monthly_invoices where organization_id = $1",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(c, i)| (c, i.to_string()))
    .collect();
    let event_tokens: Vec<(Uuid,)> = sqlx::query_as(
        "select event_id from outbox where record_name = 'dhanman.sales.InvoiceCreated'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    tokens.extend(event_tokens.into_iter().map(|(t,)| t.to_string()));
    let (manual_invoice, t) = invoice(&admin, dev, "999.99").await;
    tokens.push(t);

    // Payments: Anil through the gateway; Bela's card declined, then part by hand;
    // Chirag's invoice voided; Devika pays through the gateway.
    let (anil, bela, chirag) = (residents[0], residents[1], residents[2]);
    let r = pay(&admin, "flows-anil", &monthly[&anil], "upi").await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokens.push(token(&r.body));
    let r = admin
        .send(
            admin
                .http
                .post(format!("{}/v1/payments", admin.base))
                .header("idempotency-key", "flows-bela-card")
                .json(&json!({"invoice_id": monthly[&bela], "method": "card",
                              "reference": "decline-test"})),
        )
        .await;
    assert_eq!(r.status, 402, "{}", r.body);
    let r = admin
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": monthly[&bela], "amount": "1000.00", "method": "cash"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokens.push(token(&r.body));
    let r = admin
        .post(
            &format!("/v1/invoices/{}/void", monthly[&chirag]),
            json!({"reason": "billed twice"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokens.push(token(&r.body));
    let r = pay(&admin, "flows-devika", &manual_invoice, "netbanking").await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokens.push(token(&r.body));

    // Payroll and purchasing.
    let r = admin
        .post(
            "/v1/salaries",
            json!({"employee_id": Uuid::now_v7(), "employee_name": "Ramesh",
                   "period": "2026-12", "amount": "21000.00"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokens.push(token(&r.body));
    let (manager, t1) = user(&db, &admin, "manager@sunrise.example", "manager").await;
    let (cfo, t2) = user(&db, &admin, "cfo@sunrise.example", "cfo").await;
    let (accountant, t3) = user(&db, &admin, "accounts@sunrise.example", "accountant").await;
    for t in [t1, t2, t3] {
        let r = admin.get(&format!("/v1/users?consistent_with={t}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let vendor = Uuid::now_v7();
    let r = accountant
        .post(
            "/v1/purchase-orders",
            json!({"vendor_id": vendor, "vendor_name": "Green Gardens",
                   "items": [{"description": "Landscaping", "quantity": 1, "unit_price": "75000.00"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let po = r.body["po_id"].as_str().unwrap().to_string();
    for approver in [&manager, &cfo] {
        let r = approver
            .post(&format!("/v1/purchase-orders/{po}/approve"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] == "approved" {
            tokens.push(token(&r.body));
        }
    }
    for (po_id, amount) in [(Some(po.as_str()), "70000.00"), (None, "4500.00")] {
        let r = accountant
            .post(
                "/v1/bills",
                json!({"vendor_id": vendor, "po_id": po_id, "amount": amount,
                       "description": "Garden work", "due_date": "2027-01-15"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.push(token(&r.body));
    }

    // Everything applied: the books.
    for t in &tokens {
        let r = admin
            .get(&format!("/v1/trial-balance?consistent_with={t}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let trial = admin.get("/v1/trial-balance").await;
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    assert_eq!(
        money(&inr["total_debit"]),
        money(&inr["total_credit"]),
        "{}",
        trial.body
    );
    // Receivable per customer = invoices − payments − voids, from the command side.
    for customer in [anil, bela, chirag, dev] {
        let (invoiced, voided): (Decimal, Decimal) = sqlx::query_as(
            "select coalesce(sum(amount), 0), coalesce(sum(amount) filter (where status = 'void'), 0)
               from invoices where customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let (paid,): (Decimal,) =
            sqlx::query_as("select coalesce(sum(amount), 0) from payments where customer_id = $1")
                .bind(customer)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let r = admin
            .get(&format!("/v1/customers/{customer}/balance"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let balance = r.body["balances"][0]["balance"].clone();
        assert_eq!(
            money(&balance),
            invoiced - paid - voided,
            "customer {customer}: {}",
            r.body
        );
    }
    let ar = admin.get("/v1/accounts/1200/balance").await;
    assert_eq!(
        money(&ar.body["balances"][0]["balance"]),
        "2100.50".parse::<Decimal>().unwrap(),
        "{}",
        ar.body
    );
    // The gateway charged exactly what the saga recorded (the declined card moved nothing).
    assert_books_agree(&db, &gateway).await;
    // The reservation: 75,000 reserved, 70,000 released by the bill.
    let reserved = admin.get("/v1/accounts/2100/balance").await;
    assert_eq!(
        money(&reserved.body["balances"][0]["balance"]),
        "5000.00".parse::<Decimal>().unwrap(),
        "{}",
        reserved.body
    );
    drop(up);
    db.drop_db().await;
}
