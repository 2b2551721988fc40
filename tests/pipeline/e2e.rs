//! API → outbox → broker → ledger → API over real sockets, with v1 and v2
//! `InvoiceCreated` records mixed on the same topic; idempotency (replay, 409); consistency
//! tokens; the correlation id in the Kafka headers and the ledger's log; postings refuse
//! UPDATE and DELETE; unbalanced entries are refused.

use std::time::Duration;

use dhanman_schemas::events::{Envelope, InvoiceCreated, LedgerEntryPosted, Record};
use dhanman_schemas::topics;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_and_payments_flow_to_balances_with_v1_and_v2_records_mixed() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Sunrise Towers").await;
    let api = Api::new(&setup.base_url(), &key);

    // Two residents; one invoice each through the API (written as v2).
    let asha = api.customer("Asha").await;
    let ravi = api.customer("Ravi").await;
    let correlation = format!("e2e-{}", Uuid::new_v4());
    // One date for the first request and its retry, even across midnight.
    let due = due_date();
    let first = api
        .send(
            api.http
                .post(format!("{}/v1/invoices", api.base))
                .header("x-correlation-id", &correlation)
                .header("idempotency-key", "inv-asha-dec")
                .json(
                    &json!({"customer_id": asha, "amount": "1500.50", "due_date": due,
                              "issue_date": "2026-12-01", "period": "2026-12"}),
                ),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.headers["x-correlation-id"], correlation.as_str());
    let invoice_id = first.body["invoice_id"].as_str().unwrap().to_string();

    // A retry with the same key and body replays the first response, creates nothing.
    let retry = api
        .send(
            api.http
                .post(format!("{}/v1/invoices", api.base))
                .header("idempotency-key", "inv-asha-dec")
                .json(
                    &json!({"customer_id": asha, "amount": "1500.50", "due_date": due,
                              "issue_date": "2026-12-01", "period": "2026-12"}),
                ),
        )
        .await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body, first.body);
    // The same key with another body is a conflict.
    let clash = api
        .send(
            api.http
                .post(format!("{}/v1/invoices", api.base))
                .header("idempotency-key", "inv-asha-dec")
                .json(&json!({"customer_id": asha, "amount": "99.00", "due_date": due_date()})),
        )
        .await;
    assert_eq!(clash.status, 409, "{}", clash.body);
    assert_eq!(
        db.count(&format!(
            "select count(*) from invoices where customer_id = '{asha}'"
        ))
        .await,
        1
    );

    let second = api
        .post(
            "/v1/invoices",
            json!({"customer_id": ravi, "amount": "2000", "due_date": due_date()}),
        )
        .await;
    assert_eq!(second.status, 201, "{}", second.body);

    // An older service still writes v1 records to the same topic.
    let codec = setup.codec();
    let old = InvoiceCreated {
        envelope: Envelope::new(org, "v1-writer", None),
        invoice_id: Uuid::now_v7(),
        customer_id: ravi,
        invoice_number: "LEGACY-1".into(),
        amount: "250.25".parse().unwrap(),
        currency: "INR".into(),
        issue_date: "2026-11-01".parse().unwrap(),
        due_date: "2026-11-10".parse().unwrap(),
        description: Some("dropped by the v1 writer".into()),
        period: None,
        tax_amount: None,
    };
    let v1 = codec
        .encode_json(
            InvoiceCreated::NAME,
            1,
            &serde_json::to_value(&old).unwrap(),
        )
        .await
        .unwrap();
    produce(&producer(), &setup.topic(topics::INVOICES), &old.key(), &v1).await;

    // Asha pays in full by hand.
    let payment = api
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": invoice_id, "amount": "1500.50", "method": "cash"}),
        )
        .await;
    assert_eq!(payment.status, 201, "{}", payment.body);
    assert_eq!(payment.body["invoice_status"], "paid");
    let token = payment.body["consistency_token"].as_str().unwrap();

    // Read-your-writes: the balance waits for the ledger. A token covers its own event, and
    // the invoice and the payment travel on different topics, so each is waited for.
    let invoice_token = first.body["consistency_token"].as_str().unwrap();
    let after_invoice = api
        .get(&format!(
            "/v1/customers/{asha}/balance?consistent_with={invoice_token}"
        ))
        .await;
    assert_eq!(after_invoice.status, 200, "{}", after_invoice.body);
    let balance = api
        .get(&format!(
            "/v1/customers/{asha}/balance?consistent_with={token}"
        ))
        .await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    assert_eq!(balance.body["balances"][0]["balance"], "0.00");
    assert_eq!(balance.body["balances"][0]["invoiced"], "1500.50");

    // Ravi owes the v2 invoice plus the v1 invoice.
    let ravi_balance = eventually(
        "the v1 invoice to be posted",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let r = api.get(&format!("/v1/customers/{ravi}/balance")).await;
                (r.body["balances"][0]["balance"] == "2250.25").then_some(r)
            }
        },
    )
    .await;
    assert_eq!(ravi_balance.body["balances"][0]["currency"], "INR");
    let legacy = api
        .get(&format!(
            "/v1/ledger/entries?reference_id={}",
            old.invoice_id
        ))
        .await;
    assert_eq!(
        legacy.body["entries"].as_array().unwrap().len(),
        1,
        "{}",
        legacy.body
    );
    assert_eq!(
        legacy.body["entries"][0]["lines"][0]["account_code"],
        "1200"
    );

    let bank = api.get("/v1/accounts/1000/balance").await;
    assert_eq!(bank.body["balances"][0]["balance"], "1500.50");
    let revenue = api.get("/v1/accounts/4000/balance").await;
    assert_eq!(revenue.body["balances"][0]["balance"], "3750.75");

    let trial = api.get("/v1/trial-balance").await;
    let inr = &trial.body["currencies"][0];
    assert_eq!(inr["balanced"], true, "{}", trial.body);
    assert_eq!(inr["total_debit"], "3750.75");

    // The correlation id rode the Kafka headers and shows in the ledger's log line.
    let records = read_topic(&setup.topic(topics::INVOICES), 3).await;
    assert!(
        records
            .iter()
            .any(|r| r.header("correlation_id") == Some(correlation.as_str())),
        "no record carries the correlation id"
    );
    let log = up.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&correlation) && l.contains("posted")),
        "no ledger log line carries {correlation}:\n{log}"
    );

    // Each entry is announced once on the ledger topic, built from the journal by the relay:
    // the same lines, debits equal to credits, caused by the source event.
    let codec = setup.codec();
    let announced = read_topic(&setup.topic(topics::LEDGER_ENTRIES), 4).await;
    let mut entry_ids = Vec::new();
    for record in &announced {
        let decoded = codec.decode(&record.payload).await.unwrap();
        assert_eq!(decoded.name, LedgerEntryPosted::NAME);
        let posted: LedgerEntryPosted = serde_json::from_value(decoded.json).unwrap();
        assert_eq!(posted.envelope.organization_id, org);
        assert_eq!(
            record.header("event_id"),
            Some(posted.envelope.event_id.to_string().as_str())
        );
        assert_eq!(
            posted.envelope.causation_id,
            Some(posted.source_event_id.to_string())
        );
        let debits: rust_decimal::Decimal = posted.lines.iter().map(|l| l.debit).sum();
        let credits: rust_decimal::Decimal = posted.lines.iter().map(|l| l.credit).sum();
        assert_eq!(debits, credits, "{posted:?}");
        let stored: Vec<(String, rust_decimal::Decimal, rust_decimal::Decimal)> = sqlx::query_as(
            "select account_code, debit, credit from postings where entry_id = $1 order by id",
        )
        .bind(posted.entry_id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let sent: Vec<_> = posted
            .lines
            .iter()
            .map(|l| (l.account_code.clone(), l.debit, l.credit))
            .collect();
        assert_eq!(sent, stored);
        entry_ids.push(posted.entry_id);
    }
    entry_ids.sort();
    entry_ids.dedup();
    assert_eq!(entry_ids.len(), 4, "one announcement per entry");

    // Exactly one entry per event, each balanced, and postings are append-only.
    assert_eq!(db.count("select count(*) from journal_entries").await, 4);
    assert_eq!(db.count("select count(*) from postings").await, 8);
    let update = sqlx::query("update postings set debit = debit + 1")
        .execute(&db.pool)
        .await;
    assert!(update.is_err(), "postings must refuse UPDATE");
    let delete = sqlx::query("delete from postings").execute(&db.pool).await;
    assert!(delete.is_err(), "postings must refuse DELETE");
    drop(up);
    db.drop_db().await;
}

/// A journal entry without lines, inside `tx`.
async fn open_entry(tx: &mut sqlx::PgConnection, entry: Uuid, org: Uuid) {
    sqlx::query(
        "insert into journal_entries (id, organization_id, source_event_id, reference_type, reference_id, description, currency, occurred_at)
         values ($1, $2, $1, 'invoice', $1, 'x', 'INR', now())",
    )
    .bind(entry)
    .bind(org)
    .execute(tx)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_rejects_unbalanced_entries() {
    let db = TestDb::new().await;
    let org = Uuid::now_v7();
    sqlx::query("insert into organizations (id, name) values ($1, 'x')")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    let entry = Uuid::now_v7();
    let mut tx = db.pool.begin().await.unwrap();
    open_entry(&mut tx, entry, org).await;
    let unbalanced = sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, debit, credit)
         values ($1, $2, '1000', 10, 0), ($1, $2, '4000', 0, 9.99)",
    )
    .bind(entry)
    .bind(org)
    .execute(&mut *tx)
    .await;
    let err = unbalanced.expect_err("an unbalanced entry must be refused");
    assert!(err.to_string().contains("unbalanced"), "{err}");
    tx.rollback().await.unwrap();

    // A single line is unbalanced too, even if it is the only statement.
    let mut tx = db.pool.begin().await.unwrap();
    open_entry(&mut tx, entry, org).await;
    let single = sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, debit, credit) values ($1, $2, '1000', 10, 0)",
    )
    .bind(entry)
    .bind(org)
    .execute(&mut *tx)
    .await;
    assert!(single.is_err());
    tx.rollback().await.unwrap();

    // Balanced lines for an entry that does not exist, or on an account not in the chart.
    let orphan = sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, debit, credit)
         values ($1, $2, '1000', 10, 0), ($1, $2, '4000', 0, 10)",
    )
    .bind(Uuid::now_v7())
    .bind(org)
    .execute(&db.pool)
    .await
    .expect_err("postings of an unknown entry must be refused");
    assert!(
        orphan.to_string().contains("unknown journal entry"),
        "{orphan}"
    );
    let mut tx = db.pool.begin().await.unwrap();
    open_entry(&mut tx, entry, org).await;
    let unknown_account = sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, debit, credit)
         values ($1, $2, '1000', 10, 0), ($1, $2, '9999', 0, 10)",
    )
    .bind(entry)
    .bind(org)
    .execute(&mut *tx)
    .await
    .expect_err("an unknown account must be refused");
    assert!(
        unknown_account.to_string().contains("unknown account"),
        "{unknown_account}"
    );
    tx.rollback().await.unwrap();

    // Lines are checked per statement: a later statement cannot unbalance an entry whose
    // first lines balanced, while balanced additions keep it balanced.
    let mut tx = db.pool.begin().await.unwrap();
    open_entry(&mut tx, entry, org).await;
    let pair = "insert into postings (entry_id, organization_id, account_code, debit, credit)
                values ($1, $2, '1000', $3, 0), ($1, $2, '4000', 0, $3)";
    for amount in ["10", "2.50"] {
        sqlx::query(pair)
            .bind(entry)
            .bind(org)
            .bind(amount.parse::<rust_decimal::Decimal>().unwrap())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let extra = sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, debit, credit) values ($1, $2, '4000', 0, 1)",
    )
    .bind(entry)
    .bind(org)
    .execute(&mut *tx)
    .await
    .expect_err("a line that unbalances an entry must be refused");
    assert!(extra.to_string().contains("unbalanced"), "{extra}");
    tx.rollback().await.unwrap();

    // Entries name known organizations, and an organization with books stays.
    let stranger = Uuid::now_v7();
    let mut tx = db.pool.begin().await.unwrap();
    let unknown_org = sqlx::query(
        "insert into journal_entries (id, organization_id, source_event_id, reference_type, reference_id, description, currency, occurred_at)
         select id, case when n = 2 then $2 else $3 end, id, 'invoice', id, 'x', 'INR', now()
           from (values ($1::uuid, 1), (gen_random_uuid(), 2)) v(id, n)",
    )
    .bind(Uuid::now_v7())
    .bind(stranger)
    .bind(org)
    .execute(&mut *tx)
    .await
    .expect_err("an entry of an unknown organization must be refused");
    assert!(
        unknown_org.to_string().contains(&stranger.to_string()),
        "{unknown_org}"
    );
    tx.rollback().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    open_entry(&mut tx, entry, org).await;
    sqlx::query(pair)
        .bind(entry)
        .bind(org)
        .bind(rust_decimal::Decimal::TEN)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let deleted = sqlx::query("delete from organizations where id = $1")
        .bind(org)
        .execute(&db.pool)
        .await
        .expect_err("an organization with journal entries must stay");
    assert!(deleted.to_string().contains("journal entries"), "{deleted}");
    assert_eq!(db.count("select count(*) from organizations").await, 1);
    db.drop_db().await;
}
