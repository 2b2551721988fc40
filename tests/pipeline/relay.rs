//! The outbox relay: one relay of a deployment publishes, the others wait on its lock.
//! Stopped with SIGTERM, it finishes its batch, releases the lock and exits 0, and the
//! standby publishes from where it stopped: every event reaches the topic once.

use std::time::Duration;

use crate::helpers::*;

const ACTIVE: &str = "outbox relay is the active publisher";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_with_sigterm_hands_over_to_the_standby_and_publishes_nothing_twice() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let mut first = setup.spawn(&["relay"]);
    first.wait_for_log(ACTIVE, Duration::from_secs(60)).await;
    let second = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Relay Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    for _ in 0..5 {
        invoice(&api, customer, "10.00").await;
    }
    let unpublished = "select count(*) from outbox where published_at is null";
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (db.count(unpublished).await == 0).then_some(())
    })
    .await;
    assert!(
        !second.log_text().contains(ACTIVE),
        "the standby published while the first relay held the lock: {}",
        second.log_text()
    );

    let status = first.stop().await;
    assert!(status.success(), "{status}: {}", first.log_text());
    second.wait_for_log(ACTIVE, Duration::from_secs(30)).await;
    let mut last = String::new();
    for _ in 0..5 {
        last = invoice(&api, customer, "10.00").await.1;
    }
    ledger_applied(&api, &last).await;
    // Ten invoices, each on the topic once, whichever relay published it.
    let probe = dhanman_connectors::kafka::probe(&bootstrap()).expect("a broker probe");
    let topic = setup.topic("dhanman.sales.invoices");
    let sizes = dhanman_connectors::gauges::topic_sizes(&probe, vec![topic.clone()])
        .await
        .expect("the topic's size");
    assert_eq!(sizes, vec![(topic, 10)]);
    db.drop_db().await;
}
