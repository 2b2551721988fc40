//! Retention: published outbox rows, idempotency keys and the gate rows behind their
//! group's offsets are pruned, and what is still needed is kept; the ledger keeps no gate
//! row for an event it posts (the entry is its gate), and after its gate rows are gone, a
//! replay of its topic from the beginning posts nothing twice (an entry's id is its
//! event's), the books are unchanged and nothing is dead-lettered.

use std::time::Duration;

use dhanman_connectors::retention::{Retention, prune};
use rust_decimal::Decimal;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_what_is_needed_and_a_replay_after_it_posts_nothing_twice() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let mut up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Pruned Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    let mut last = String::new();
    for _ in 0..6 {
        last = invoice(&api, customer, "125.00").await.1;
    }
    ledger_applied(&api, &last).await;
    // A retried command within the retry window is replayed, not run again.
    let body = serde_json::json!({"customer_id": customer, "amount": "10.00",
                                  "due_date": due_date(), "issue_date": "2026-12-01"});
    let keyed = api
        .send(
            api.http
                .post(format!("{}/v1/invoices", api.base))
                .bearer_auth(&api.key)
                .header("Idempotency-Key", "retry-window")
                .json(&body),
        )
        .await;
    assert_eq!(keyed.status, 201, "{}", keyed.body);
    ledger_applied(&api, keyed.body["consistency_token"].as_str().unwrap()).await;
    // Everything published, every event applied.
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (db.count("select count(*) from outbox_pending").await == 0).then_some(())
    })
    .await;
    let entries = db.count("select count(*) from journal_entries").await;
    let gate_before = db
        .count("select count(*) from processed_events where processor = 'ledger'")
        .await;
    assert_eq!(entries, 7);
    // Every event here posts: its entry is its gate, and the ledger wrote no gate row.
    assert_eq!(gate_before, 0);
    assert_eq!(
        db.count("select count(*) from applied_events where processor = 'ledger'")
            .await,
        7
    );

    // A gate row not yet behind its group's offset, an outbox row not yet published and a
    // parked one stay. (The pipeline stops first, so no relay publishes the row meanwhile.)
    let status = up.stop().await;
    assert!(status.success(), "{status}: {}", up.log_text());
    let (waiting, parked) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, raw_value, headers, parked_at)
         values ($1, 'dhanman.sales.invoices', 'k', 'x', '{}', null),
                ($2, 'dhanman.sales.invoices', 'k', 'x', '{}', now())",
    )
    .bind(waiting)
    .bind(parked)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into processed_events (processor, event_id, topic, partition, \"offset\")
         values ('ledger', $1, $2, 0, 1000000)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(setup.topic("dhanman.sales.invoices"))
    .execute(&db.pool)
    .await
    .unwrap();
    let groups = vec![(
        "ledger".to_string(),
        format!("{}dhanman.ledger", setup.topic_prefix),
    )];
    let everything = Retention {
        outbox: Duration::ZERO,
        idempotency: Duration::ZERO,
        gate: Duration::ZERO,
    };
    let pruned = prune(&db.pool, everything, &groups).await.unwrap();
    assert!(pruned.outbox >= 7, "{pruned:?}");
    assert_eq!(pruned.idempotency_keys, 1, "{pruned:?}");
    assert_eq!(pruned.processed_events as i64, gate_before, "{pruned:?}");
    assert_eq!(
        db.count(&format!(
            "select count(*) from outbox where event_id in ('{waiting}', '{parked}')"
        ))
        .await,
        2,
        "the unpublished and the parked row stay"
    );
    assert_eq!(
        db.count("select count(*) from outbox_pending").await,
        1,
        "only the unpublished row waits for the relay; the parked one waits to be unparked"
    );
    // Those two rows hold no record: taken away before the pipeline starts again.
    sqlx::query(
        "with gone as (delete from outbox where event_id in ($1, $2) returning id)
         delete from outbox_pending where id in (select id from gone)",
    )
    .bind(waiting)
    .bind(parked)
    .execute(&db.pool)
    .await
    .unwrap();
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    assert_eq!(
        db.count("select count(*) from processed_events where processor = 'ledger'")
            .await,
        1,
        "the row ahead of its group's offset stays"
    );
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries
    );
    // Kept for a month, nothing goes.
    let month = Retention {
        outbox: Duration::from_secs(30 * 86400),
        idempotency: Duration::from_secs(30 * 86400),
        gate: Duration::from_secs(30 * 86400),
    };
    let none = prune(&db.pool, month, &groups).await.unwrap();
    assert_eq!(none, Default::default());

    // The ledger's topic read again from the start, its gate rows gone: nothing posted twice.
    let invoices = setup.topic("dhanman.sales.invoices");
    let replayed = dhanman(
        &setup,
        &[
            "replay",
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--from",
            "beginning",
            "--execute",
            "--json",
        ],
    )
    .await;
    assert!(replayed.ok, "{}", replayed.stderr);
    assert_eq!(replayed.json()["dead_lettered"], 0, "{}", replayed.stdout);
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries
    );
    let (receivable,): (Decimal,) = sqlx::query_as(
        "select debit_total - credit_total from party_balances
          where account_code = '1200' and party_id = $1",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(receivable, Decimal::new(76_000, 2));
    assert_eq!(
        db.count("select count(*) from outbox where raw_value is not null")
            .await,
        0,
        "nothing dead-lettered"
    );
    drop(up);
    db.drop_db().await;
}
