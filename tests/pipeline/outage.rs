//! Postgres briefly unavailable under a running processor: nothing dead-lettered,
//! nothing lost once it returns. A ledger stuck inside its transaction under `dhanman up`
//! holds none of the connections the API answers on.

use std::time::Duration;

use dhanman_schemas::events::Record;
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_delays_but_loses_and_dead_letters_nothing() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Outage Society").await;
    let codec = setup.codec();

    // The processor reaches Postgres only through a proxy the test can cut.
    let proxy = Proxy::start(&pg_addr(&db.url)).await;
    let proxied = proxy.url(&db.url);
    let processor = setup.spawn_with_env(
        &["process", "ledger"],
        &[
            ("DATABASE_URL", proxied.as_str()),
            ("DHANMAN_BATCH_SIZE", "20"),
        ],
    );

    let customer = Uuid::now_v7();
    let mut records = Vec::new();
    for i in 0..600 {
        let e = payment(org, customer, 100 + i, &format!("outage-{i}"));
        records.push((e.key(), codec.encode(&e).await.unwrap()));
    }
    let expected: Decimal = (0..600).map(|i| Decimal::new(100 + i, 2)).sum();
    let topic = setup.topic(topics::PAYMENTS);
    let producer = producer();
    produce_all(
        &producer,
        records[..200]
            .iter()
            .map(|(k, v)| (topic.clone(), k.as_str(), v.as_slice())),
    )
    .await;
    let processed = "select count(*) from applied_events";
    db.wait_count(
        "the first events to be applied",
        processed,
        1,
        Duration::from_secs(60),
    )
    .await;

    proxy.cut();
    produce_all(
        &producer,
        records[200..]
            .iter()
            .map(|(k, v)| (topic.clone(), k.as_str(), v.as_slice())),
    )
    .await;
    // The processor must notice: it logs the transient failure and retries.
    processor
        .wait_for_log("transient failure", Duration::from_secs(60))
        .await;
    let during = db.count(processed).await;
    assert!(during < 600, "the outage must hold processing back");
    proxy.restore();

    db.wait_count(
        "every event to be applied after the outage",
        processed,
        600,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(db.count(processed).await, 600);
    assert_eq!(db.count("select count(*) from journal_entries").await, 600);
    let (bank,): (Decimal,) = sqlx::query_as(
        "select debit_total - credit_total from account_balances where account_code = '1000'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(bank, expected);
    assert_eq!(
        db.count("select count(*) from outbox where raw_value is not null")
            .await,
        0
    );
    assert!(!processor.log_text().contains("dead-lettering"));
    drop((processor, api));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_stuck_in_its_transaction_leaves_the_api_its_connections() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // One connection per pool: before the API had a pool of its own, the ledger's
    // transaction held the only one and every request waited for it.
    let up = setup.spawn_with_env(&["up"], &[("DHANMAN_DB_POOL", "1")]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Stuck Ledger Society").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;

    // Inserts into the journal wait on the test's lock; reads go on.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("lock table journal_entries in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let invoice = api
        .post(
            "/v1/invoices",
            json!({"customer_id": asha, "amount": "1500.50", "due_date": due_date()}),
        )
        .await;
    assert_eq!(invoice.status, 201, "{}", invoice.body);
    let waiting = "select count(*) from pg_locks
                    where not granted and relation = 'journal_entries'::regclass";
    db.wait_count(
        "the ledger to wait for the journal inside its transaction",
        waiting,
        1,
        Duration::from_secs(60),
    )
    .await;

    // A read and a write through the API's pool, while the ledger still waits.
    let balance = api.get(&format!("/v1/customers/{asha}/balance")).await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    assert_eq!(balance.body["balances"], json!([]), "nothing posted yet");
    let ravi = api
        .post(
            "/v1/customers",
            json!({"name": "Ravi", "email": "ravi@example.org"}),
        )
        .await;
    assert_eq!(ravi.status, 201, "{}", ravi.body);
    assert!(
        db.count(waiting).await >= 1,
        "the ledger must have waited while the API answered"
    );

    lock.rollback().await.unwrap();
    let posted = eventually(
        "the invoice to be posted once the journal is free",
        Duration::from_secs(60),
        || async {
            let r = api.get(&format!("/v1/customers/{asha}/balance")).await;
            (r.body["balances"][0]["invoiced"] == "1500.50").then_some(r)
        },
    )
    .await;
    assert_eq!(posted.body["balances"][0]["balance"], "1500.50");
    drop(up);
    db.drop_db().await;
}
