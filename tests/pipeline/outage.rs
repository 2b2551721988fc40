//! Postgres briefly unavailable under a running processor: nothing dead-lettered,
//! nothing lost once it returns.

use std::time::Duration;

use dhanman_schemas::events::Record;
use dhanman_schemas::topics;
use rust_decimal::Decimal;
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
