//! Users reach the users projection (`UserCreated` on the topic), each with the key they
//! got by accepting their invitation (the admin's create-user answer holds none); only an
//! admin creates users; roles bound commands (403); approval requests go to the managers
//! and approvers, never the requester; an accountant's approval is 403, another
//! organization's 404, the requester's own 403; six concurrent approvals: one 200, five
//! 409, one `POApproved`; a large order needs manager and CFO; a rejection posts nothing;
//! bills post expense against payable and release the reservation, never beyond the order
//! (422 `amount`), not against a rejected order (409). In-process: an admin's approval is
//! 403; a manager who approved and is then made CFO by hand may not approve or reject the
//! CFO step (403, nothing written: the approvals come from distinct people); the requester
//! is refused at every step; another approver's same `Idempotency-Key` and body is their
//! own decision, not a replay

use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

struct User {
    id: Uuid,
    api: Api,
    token: String,
}

/// A user created by `admin`, with the key they got by accepting their invitation (the
/// administrator's answer holds none; the token is read where the notifier reads it).
async fn create_user(db: &TestDb, admin: &Api, email: &str, name: &str, role: &str) -> User {
    let invited = crate::keys::invite(db, admin, email, name, role).await;
    User {
        id: invited.id,
        api: invited.api,
        token: invited.token,
    }
}

fn order(vendor: Uuid, items: Value) -> Value {
    json!({"vendor_id": vendor, "vendor_name": "Shree Lifts", "items": items})
}

async fn submit(user: &User, body: Value) -> (Uuid, Value) {
    let r = user.api.post("/v1/purchase-orders", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    (r.body["po_id"].as_str().unwrap().parse().unwrap(), r.body)
}

async fn decide(user: &User, po: Uuid, verb: &str, body: Value) -> Reply {
    user.api
        .post(&format!("/v1/purchase-orders/{po}/{verb}"), body)
        .await
}

/// Waits until the ledger has applied every event named (each token covers its own).
async fn settle(api: &Api, tokens: &[&str]) {
    for token in tokens {
        let r = api
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// The balance of one account in INR as the API reports it.
async fn balance(api: &Api, account: &str) -> String {
    let r = api.get(&format!("/v1/accounts/{account}/balance")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["balances"][0]["balance"]
        .as_str()
        .unwrap_or("0.00")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_orders_approvals_and_bills_end_to_end() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, admin_key) = create_org(&setup, "Lotus Towers").await;
    let (_, other_key) = create_org(&setup, "Cedar Heights").await;
    let admin = Api::new(&setup.base_url(), &admin_key);
    let other = Api::new(&setup.base_url(), &other_key);

    // Users: each with a key of their role (their own, from their invitation), announced
    // and projected.
    let accountant = create_user(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    let manager = create_user(&db, &admin, "mgr@lotus.example", "Meera", "manager").await;
    let approver = create_user(&db, &admin, "apr@lotus.example", "Arun", "approver").await;
    let cfo = create_user(&db, &admin, "cfo@lotus.example", "Chitra", "cfo").await;
    let other_manager = create_user(&db, &other, "mgr@cedar.example", "Om", "manager").await;
    let r = admin
        .get(&format!(
            "/v1/users?role=manager&consistent_with={}",
            manager.token
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let managers = r.body["users"].as_array().unwrap();
    assert_eq!(managers.len(), 1, "{}", r.body);
    assert_eq!(managers[0]["email"], "mgr@lotus.example");
    for user in [&accountant, &approver, &cfo] {
        let r = admin
            .get(&format!(
                "/v1/users/{}?consistent_with={}",
                user.id, user.token
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The other organization's user is not ours to see.
    let r = admin.get(&format!("/v1/users/{}", other_manager.id)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let announced = read_topic(&setup.topic("dhanman.common.users"), 7).await;
    let names: Vec<_> = announced
        .iter()
        .filter_map(|r| r.header("record_name"))
        .collect();
    assert!(
        names.iter().all(|n| *n == "dhanman.common.UserCreated") && names.len() == 7,
        "{names:?}"
    );

    // Only an administrator creates users; bad input names its field; emails are unique.
    let r = manager
        .api
        .post(
            "/v1/users",
            json!({"email": "x@lotus.example", "name": "X", "role": "cfo"}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (403, &json!("forbidden")),
        "{}",
        r.body
    );
    for (body, field) in [
        (
            json!({"email": "not-an-email", "name": "X", "role": "cfo"}),
            "email",
        ),
        (
            json!({"email": "x@lotus.example", "name": " ", "role": "cfo"}),
            "name",
        ),
        (
            json!({"email": "x@lotus.example", "name": "X", "role": "owner"}),
            "role",
        ),
        (
            json!({"email": "x@lotus.example", "name": "X", "role": "cfo", "age": 3}),
            "age",
        ),
    ] {
        let r = admin.post("/v1/users", body).await;
        assert_eq!(
            (r.status, &r.body["field"]),
            (422, &json!(field)),
            "{}",
            r.body
        );
    }
    let r = admin
        .post(
            "/v1/users",
            json!({"email": "MGR@lotus.example", "name": "Again", "role": "manager"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Roles bound what a key does: a manager keeps no books.
    let customer = admin.customer("Flat 4B").await;
    let r = manager
        .api
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "amount": "100.00", "due_date": due_date()}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    let vendor = Uuid::now_v7();
    // A small order (2 × 12,000 = 24,000) needs a manager only; the managers (and general
    // approvers) are asked, the requester is not.
    let (small, body) = submit(
        &accountant,
        order(
            vendor,
            json!([{"description": "Lift service", "quantity": 2, "unit_price": "12000.00"}]),
        ),
    )
    .await;
    assert_eq!(body["amount"], "24000.00", "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(body["required_approvals"], json!(["manager"]), "{body}");
    assert_eq!(body["requester_id"], json!(accountant.id), "{body}");
    let submitted = body["consistency_token"].as_str().unwrap().to_string();
    db.wait_count(
        "approval requests of the small order",
        &format!(
            "select count(*) from outbox where record_name = \
                 'dhanman.notification.SendApprovalRequest' and payload->>'po_id' = '{small}'"
        ),
        2,
        std::time::Duration::from_secs(30),
    )
    .await;
    let recipients: Vec<(String,)> = sqlx::query_as(
        "select payload->>'recipient' from outbox
          where record_name = 'dhanman.notification.SendApprovalRequest'
            and payload->>'po_id' = $1 order by 1",
    )
    .bind(small.to_string())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        recipients,
        [
            ("apr@lotus.example".to_string(),),
            ("mgr@lotus.example".to_string(),)
        ]
    );
    // An accountant gives no approval; another organization cannot see the order.
    let r = decide(&accountant, small, "approve", json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = decide(&other_manager, small, "approve", json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = other_manager
        .api
        .get(&format!("/v1/purchase-orders/{small}"))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Concurrent approvals by the two who can give the manager's approval: one wins.
    let replies = join_all((0..6).map(|i| {
        decide(
            if i % 2 == 0 { &manager } else { &approver },
            small,
            "approve",
            json!({"comment": "ok"}),
        )
    }))
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        5,
        "{statuses:?}"
    );
    let winner = replies.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(winner.body["status"], "approved", "{}", winner.body);
    let approved_token = winner.body["consistency_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        db.count(&format!(
            "select count(*) from outbox where record_name = 'dhanman.purchase.POApproved' \
             and payload->>'po_id' = '{small}'"
        ))
        .await,
        1
    );
    let r = admin.get(&format!("/v1/purchase-orders/{small}")).await;
    assert_eq!(
        r.body["approval_trail"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    assert_eq!(r.body["approval_trail"][0]["comment"], "ok", "{}", r.body);
    // The approval reserves the budget: 5900 up, 2100 up.
    settle(&admin, &[&submitted, &approved_token]).await;
    assert_eq!(balance(&admin, "5900").await, "24000.00");
    assert_eq!(balance(&admin, "2100").await, "24000.00");

    // A large order needs the manager and the CFO; its requester (a manager) may not
    // approve it, and the first approval leaves it pending.
    let (large, body) = submit(
        &manager,
        order(
            vendor,
            json!([
                {"description": "Water pump", "quantity": 1, "unit_price": "45000.00"},
                {"description": "Piping", "quantity": 10, "unit_price": "800.50"}
            ]),
        ),
    )
    .await;
    assert_eq!(body["amount"], "53005.00", "{body}");
    assert_eq!(
        body["required_approvals"],
        json!(["manager", "cfo"]),
        "{body}"
    );
    let r = decide(&manager, large, "approve", json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("requester"),
        "{}",
        r.body
    );
    let r = decide(&cfo, large, "approve", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "pending", "{}", r.body);
    assert_eq!(
        r.body["pending_approvals"],
        json!(["manager"]),
        "{}",
        r.body
    );
    assert_eq!(r.body["consistency_token"], Value::Null, "{}", r.body);
    // Nobody asks the requester to approve; the approver and the CFO are asked.
    db.wait_count(
        "approval requests of the large order",
        &format!(
            "select count(*) from outbox where record_name = \
             'dhanman.notification.SendApprovalRequest' and payload->>'po_id' = '{large}'"
        ),
        2,
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from outbox where record_name = \
             'dhanman.notification.SendApprovalRequest' and payload->>'po_id' = '{large}' \
             and payload->>'recipient' = 'mgr@lotus.example'"
        ))
        .await,
        0
    );
    let r = decide(&approver, large, "approve", json!({"comment": "needed"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "approved", "{}", r.body);
    let large_token = r.body["consistency_token"].as_str().unwrap().to_string();
    let approved: Value = sqlx::query_scalar(
        "select payload from outbox where record_name = 'dhanman.purchase.POApproved' \
         and payload->>'po_id' = $1",
    )
    .bind(large.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        approved["approved_by"],
        json!([cfo.id, approver.id]),
        "{approved}"
    );
    settle(&admin, &[&large_token]).await;
    assert_eq!(balance(&admin, "2100").await, "77005.00");

    // A rejected order posts nothing and takes no further decisions.
    let (rejected, _) = submit(
        &accountant,
        order(
            vendor,
            json!([{"description": "Fountain", "quantity": 1, "unit_price": "9000.00"}]),
        ),
    )
    .await;
    let r = decide(
        &manager,
        rejected,
        "reject",
        json!({"comment": "not this year"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "rejected", "{}", r.body);
    let rejected_token = r.body["consistency_token"].as_str().unwrap().to_string();
    let r = decide(&approver, rejected, "approve", json!({})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let rejection: Value = sqlx::query_scalar(
        "select payload from outbox where record_name = 'dhanman.purchase.PORejected' \
         and payload->>'po_id' = $1",
    )
    .bind(rejected.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rejection["reason"], "not this year");
    assert_eq!(rejection["rejected_by"], json!(manager.id));
    settle(&admin, &[&rejected_token]).await;
    assert_eq!(balance(&admin, "2100").await, "77005.00");

    // Bills: against the small order, at most its amount; the rest refused with nothing
    // written; an order not approved cannot be billed.
    let bill = |po: Option<Uuid>, amount: &str| {
        json!({"vendor_id": vendor, "po_id": po, "amount": amount,
               "description": "Lift service, December", "due_date": "2026-12-31"})
    };
    let r = accountant
        .api
        .post("/v1/bills", bill(Some(small), "20000.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bill_id = r.body["bill_id"].as_str().unwrap().to_string();
    let first_bill = r.body["consistency_token"].as_str().unwrap().to_string();
    let before = command_events(&db).await;
    let r = accountant
        .api
        .post("/v1/bills", bill(Some(small), "4000.01"))
        .await;
    assert_eq!(
        (r.status, &r.body["field"]),
        (422, &json!("amount")),
        "{}",
        r.body
    );
    let r = accountant
        .api
        .post("/v1/bills", bill(Some(rejected), "10.00"))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = accountant
        .api
        .post("/v1/bills", bill(Some(Uuid::now_v7()), "10.00"))
        .await;
    assert_eq!(
        (r.status, &r.body["field"]),
        (422, &json!("po_id")),
        "{}",
        r.body
    );
    let r = manager.api.post("/v1/bills", bill(None, "10.00")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(command_events(&db).await, before);
    let r = accountant
        .api
        .post("/v1/bills", bill(Some(small), "4000.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let last_bill = r.body["consistency_token"].as_str().unwrap().to_string();
    let r = accountant
        .api
        .post("/v1/bills", bill(None, "1500.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let plain_bill = r.body["consistency_token"].as_str().unwrap().to_string();
    let r = admin.get(&format!("/v1/bills/{bill_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["po_id"], json!(small), "{}", r.body);
    let r = other.get(&format!("/v1/bills/{bill_id}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin.get(&format!("/v1/purchase-orders/{small}")).await;
    assert_eq!(r.body["billed"], "24000.00", "{}", r.body);

    // The books: the small order's reservation is released in full, the large one's stays;
    // expenses and payables carry every bill; the trial balance nets to zero.
    settle(&admin, &[&first_bill, &last_bill, &plain_bill]).await;
    assert_eq!(balance(&admin, "2100").await, "53005.00");
    assert_eq!(balance(&admin, "5900").await, "53005.00");
    assert_eq!(balance(&admin, "5000").await, "25500.00");
    assert_eq!(balance(&admin, "2000").await, "25500.00");
    let trial = admin.get("/v1/trial-balance").await;
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    assert_eq!(inr["total_debit"], inr["total_credit"], "{}", trial.body);
    drop(up);
    db.drop_db().await;
}

/// `POST /v1/purchase-orders/{po}/approve` with an `Idempotency-Key`.
async fn approve_keyed(user: &User, po: Uuid, key: &str) -> Reply {
    user.api
        .send(
            user.api
                .http
                .post(format!("{}/v1/purchase-orders/{po}/approve", user.api.base))
                .header("idempotency-key", key)
                .json(&json!({})),
        )
        .await
}

/// Separation of duties, on the command side alone (the API in-process): an administrator
/// holds no approver's key; every approval of an order comes from a different person,
/// never its requester, whatever role a user has by the time of the second step; another
/// approver's `Idempotency-Key` does not replay someone else's approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_come_from_distinct_people_never_the_requester() {
    let db = TestDb::new().await;
    // A role is changed by hand below, in the database: this API believes no key from
    // memory (with its key cache, the change would count within the cache's time to live).
    let mut state = api_state(&db);
    state.keys = dhanman_api::key_cache::KeyCache::new(std::time::Duration::ZERO);
    let base = serve_state(state).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let requester = create_user(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    let manager = create_user(&db, &admin, "mgr@lotus.example", "Meera", "manager").await;
    let approver = create_user(&db, &admin, "apr@lotus.example", "Arun", "approver").await;
    let cfo = create_user(&db, &admin, "cfo@lotus.example", "Chitra", "cfo").await;
    let large = || {
        order(
            Uuid::now_v7(),
            json!([{"description": "Water pump", "quantity": 1, "unit_price": "60000.00"}]),
        )
    };
    let decisions = |po: Uuid| format!("select count(*) from po_decisions where po_id = '{po}'");

    // The administrator gives no approval with their own key either.
    let (po, _) = submit(&requester, large()).await;
    let r = admin
        .post(&format!("/v1/purchase-orders/{po}/approve"), json!({}))
        .await;
    assert_refused(&r, 403, "Authorization");
    assert!(
        r.body["message"].as_str().unwrap().contains("role admin"),
        "{}",
        r.body
    );

    // The manager approves; then is made CFO (by hand: the directory and the key). The
    // same person may not give the CFO's approval as well.
    let r = decide(&manager, po, "approve", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["pending_approvals"], json!(["cfo"]), "{}", r.body);
    for table in [
        "users set role = 'cfo' where id",
        "api_keys set role = 'cfo' where user_id",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("update {table} = $1")))
            .bind(manager.id)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let before = command_events(&db).await;
    for verb in ["approve", "reject"] {
        let r = decide(&manager, po, verb, json!({})).await;
        assert_refused(&r, 403, "Authorization");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("different person"),
            "{}",
            r.body
        );
    }
    assert_eq!(db.count(&decisions(po)).await, 1);
    assert_eq!(command_events(&db).await, before);
    let r = decide(&cfo, po, "approve", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "approved", "{}", r.body);
    let approved: Value = sqlx::query_scalar(
        "select payload from outbox where record_name = 'dhanman.purchase.POApproved' \
         and payload->>'po_id' = $1",
    )
    .bind(po.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        approved["approved_by"],
        json!([manager.id, cfo.id]),
        "{approved}"
    );

    // The requester decides no step: a CFO's own order waits for another CFO.
    let (own, _) = submit(&cfo, large()).await;
    for verb in ["approve", "reject"] {
        let r = decide(&cfo, own, verb, json!({})).await;
        assert_refused(&r, 403, "Authorization");
        assert!(
            r.body["message"].as_str().unwrap().contains("requester"),
            "{}",
            r.body
        );
    }
    let r = decide(&approver, own, "approve", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["pending_approvals"], json!(["cfo"]), "{}", r.body);
    assert_eq!(db.count(&decisions(own)).await, 1);

    // An Idempotency-Key is its user's: the approver's retry replays their approval; the
    // CFO sending the same key and body gets a decision of their own, not that replay.
    let (third, _) = submit(&requester, large()).await;
    let first = approve_keyed(&approver, third, "approve-once").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "pending", "{}", first.body);
    let again = approve_keyed(&approver, third, "approve-once").await;
    assert_eq!(
        again.body, first.body,
        "the approver's own retry is replayed"
    );
    let r = approve_keyed(&cfo, third, "approve-once").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "approved", "{}", r.body);
    assert_eq!(
        r.body["approval_trail"][1]["user_id"],
        json!(cfo.id),
        "{}",
        r.body
    );
    // Another manager with the same key and body: their own decision, refused (the order
    // is decided), not the approver's stored 200.
    let late_manager = create_user(&db, &admin, "mgr2@lotus.example", "Mohan", "manager").await;
    let r = approve_keyed(&late_manager, third, "approve-once").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(db.count(&decisions(third)).await, 2);
    db.drop_db().await;
}
