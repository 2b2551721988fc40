//! Two `dhanman process ledger` processes in one group share the partitions; one is
//! SIGKILLed mid-stream of 12,000 events and restarted; entry and posting counts, sums and
//! every customer's balance are exactly as sent; the same when a processor splitting its
//! batches into concurrent lanes is SIGKILLed with some lanes of a batch committed. One of two stopped
//! with SIGTERM exits 0 and leaves the group at once (the broker describes the other as its
//! only member); the coordinator hands the other every partition and the books are exact

use std::collections::HashMap;
use std::time::Duration;

use dhanman_schemas::events::{Envelope, PaymentReceived, Record};
use dhanman_schemas::topics;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::helpers::*;

const EVENTS: usize = 12_000;

/// Waits until every one of `members` has been assigned at least one partition.
async fn wait_owning(who: &str, members: &[&Proc]) {
    let owns = |p: &Proc| {
        p.log_text()
            .lines()
            .any(|l| l.contains("partitions assigned") && !l.contains("partitions=0 "))
    };
    eventually(
        &format!("{who} to own partitions"),
        Duration::from_secs(90),
        || {
            let all = members.iter().all(|p| owns(p));
            async move { all.then_some(()) }
        },
    )
    .await;
}

/// Events encoded for the ledger: 200 residents, invoices and payments interleaved, with
/// what the books must say once each is applied once.
struct Stream {
    records: Vec<(&'static str, String, Vec<u8>)>,
    customers: Vec<Uuid>,
    expected_ar: HashMap<Uuid, Decimal>,
    expected_total: Decimal,
}

impl Stream {
    /// Produces the stream's records in `range` to the setup's topics.
    async fn produce(&self, setup: &Setup, range: std::ops::Range<usize>) {
        produce_all(
            &producer(),
            self.records[range]
                .iter()
                .map(|(t, k, v)| (setup.topic(t), k.as_str(), v.as_slice())),
        )
        .await;
    }
}

async fn interleaved(setup: &Setup, org: Uuid, events: usize) -> Stream {
    let codec = setup.codec();
    let customers: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let mut expected_ar: HashMap<Uuid, Decimal> = HashMap::new();
    let mut expected_total = Decimal::ZERO;
    let mut records = Vec::with_capacity(events);
    for i in 0..events {
        let customer = customers[i % customers.len()];
        let amount = Decimal::new(10_000 + i as i64, 2);
        let envelope = Envelope::new(org, &format!("crash-{i}"), None);
        if i % 3 == 2 {
            let e = PaymentReceived {
                envelope,
                payment_id: Uuid::now_v7(),
                invoice_id: None,
                customer_id: customer,
                amount,
                currency: "INR".into(),
                method: "upi".into(),
                reference: None,
            };
            *expected_ar.entry(customer).or_default() -= amount;
            records.push((topics::PAYMENTS, e.key(), codec.encode(&e).await.unwrap()));
        } else {
            let mut e = invoice_created(org, customer, &format!("C-{i}"), "1.00");
            e.envelope = envelope;
            e.amount = amount;
            *expected_ar.entry(customer).or_default() += amount;
            records.push((topics::INVOICES, e.key(), codec.encode(&e).await.unwrap()));
        }
        expected_total += amount;
    }
    Stream {
        records,
        customers,
        expected_ar,
        expected_total,
    }
}

/// Every event of `stream` applied once: entries, postings, sums, each customer's balance,
/// the materialized balances against the postings, nothing dead-lettered.
async fn assert_books_exact(db: &TestDb, stream: &Stream) {
    let Stream {
        records,
        customers,
        expected_ar,
        expected_total,
    } = stream;
    let events = records.len();
    assert_eq!(
        db.count("select count(*) from applied_events").await as usize,
        events
    );
    assert_eq!(
        db.count("select count(*) from journal_entries").await as usize,
        events
    );
    assert_eq!(
        db.count("select count(*) from postings").await as usize,
        2 * events
    );
    let (debits, credits): (Decimal, Decimal) =
        sqlx::query_as("select sum(debit), sum(credit) from postings")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(debits, *expected_total);
    assert_eq!(credits, *expected_total);
    let balances: Vec<(Uuid, Decimal)> = sqlx::query_as(
        "select party_id, debit_total - credit_total from party_balances where account_code = '1200'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(balances.len(), customers.len());
    for (customer, balance) in balances {
        assert_eq!(balance, expected_ar[&customer], "AR of {customer}");
    }
    // Materialized balances agree with the postings they summarize.
    let (from_postings,): (Decimal,) = sqlx::query_as(
        "select coalesce(sum(debit - credit), 0) from postings where account_code = '1200'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (from_balances,): (Decimal,) = sqlx::query_as(
        "select coalesce(sum(debit_total - credit_total), 0) from account_balances where account_code = '1200'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(from_postings, from_balances);
    assert_eq!(
        db.count("select count(*) from outbox where raw_value is not null")
            .await,
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_two_processors_loses_and_doubles_nothing() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // The API serves the embedded registry the processors decode with.
    let (api, org) = api_with_org(&setup, "Crash Test Society").await;

    let stream = interleaved(&setup, org, EVENTS).await;

    // Small batches so the kill lands mid-stream.
    let spawn_processor =
        || setup.spawn_with_env(&["process", "ledger"], &[("DHANMAN_BATCH_SIZE", "50")]);
    let mut a = spawn_processor();
    let b = spawn_processor();

    // Produce while both run.
    let first_half = EVENTS / 2;
    stream.produce(&setup, 0..first_half).await;

    // Both members must own partitions before the kill.
    wait_owning("both processors", &[&a, &b]).await;
    let processed = "select count(*) from applied_events";
    db.wait_count(
        "processing to be under way",
        processed,
        1000,
        Duration::from_secs(90),
    )
    .await;
    a.kill().await;
    // The restarted member joins before the rest is produced, so that both survivors have
    // work left to share (a fast survivor could otherwise drain everything alone).
    let a2 = spawn_processor();
    wait_owning("the restarted processor", &[&a2]).await;
    stream.produce(&setup, first_half..EVENTS).await;

    db.wait_count(
        "every event to be applied",
        processed,
        EVENTS as i64,
        Duration::from_secs(300),
    )
    .await;

    // Both survivors did part of the work.
    for p in [&b, &a2] {
        assert!(
            p.log_text().contains("posted journal entry"),
            "{} posted nothing",
            p.log.display()
        );
    }
    assert_books_exact(&db, &stream).await;
    drop((a2, b, api));
    db.drop_db().await;
}

/// A backlog read in batches of 1,000 split into lanes (up to four, by customer; transactions
/// committed concurrently, the offsets stored once all have committed). One customer's
/// balance row is held locked, so that the lane holding that customer waits while the other
/// lanes commit; the processor is SIGKILLed with the batch half committed, then restarted:
/// nothing lost (the half not committed is read again), nothing doubled (the committed half
/// is skipped by its entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_killed_with_some_of_its_lanes_committed_loses_and_doubles_nothing() {
    const FIRST: usize = 200;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Lanes Society").await;
    let stream = interleaved(&setup, org, EVENTS).await;
    let spawn_processor = || {
        setup.spawn_with_env(
            &["process", "ledger"],
            &[
                ("DHANMAN_BATCH_SIZE", "1000"),
                ("DHANMAN_LANES", "4"),
                (
                    "RUST_LOG",
                    "info,rdkafka=warn,sqlx=warn,dhanman_processors::runtime::membership=debug",
                ),
            ],
        )
    };
    let processed = "select count(*) from applied_events";

    // One event per customer, so that each has a balance row to lock.
    let mut first = spawn_processor();
    stream.produce(&setup, 0..FIRST).await;
    db.wait_count(
        "the first events",
        processed,
        FIRST as i64,
        Duration::from_secs(90),
    )
    .await;
    assert!(first.stop().await.success(), "{}", first.log_text());

    let mut holder = db.pool.begin().await.unwrap();
    let (holder_pid,): (i32,) = sqlx::query_as("select pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::query("select 1 from party_balances where party_id = $1 for update")
        .bind(stream.customers[0])
        .execute(&mut *holder)
        .await
        .unwrap();
    // A backlog, read by a processor started after it: full batches, split.
    let backlog = 2 * EVENTS / 3;
    stream.produce(&setup, FIRST..backlog).await;
    let mut killed = spawn_processor();
    // One session of the processor waits on the lock, no other is inside a transaction,
    // and events past the stored offsets are applied: the other lanes of the batch have
    // committed (a lane that has not yet begun is idle too, so the last look is needed).
    eventually(
        "one lane to wait on the locked balance and the others to commit",
        Duration::from_secs(90),
        || {
            let pool = db.pool.clone();
            async move {
                let (waiting, busy, past): (i64, i64, bool) = sqlx::query_as(
                    "select count(*) filter (where wait_event_type = 'Lock'),
                            count(*) filter (where state <> 'idle'
                                               and wait_event_type is distinct from 'Lock'),
                            (select count(*) from applied_events)
                              > (select coalesce(sum(next_offset), 0) from consumer_offsets)
                       from pg_stat_activity
                      where datname = current_database()
                        and pid not in ($1, pg_backend_pid())",
                )
                .bind(holder_pid)
                .fetch_one(&pool)
                .await
                .ok()?;
                (waiting == 1 && busy == 0 && past).then_some(())
            }
        },
    )
    .await;
    killed.kill().await;
    holder.rollback().await.unwrap();
    // Events applied past the offsets stored: the lanes of the batch that committed.
    let applied = db.count(processed).await;
    let stored = db
        .count("select coalesce(sum(next_offset), 0)::int8 from consumer_offsets")
        .await;
    assert!(
        applied > stored,
        "the kill found {applied} events applied, {stored} within the stored offsets: {}",
        killed.log_text()
    );
    // Split into as many lanes as its size allows: a backlog's first batch may be read
    // before every partition's records have arrived, and so split into fewer than four.
    assert!(
        killed
            .log_text()
            .lines()
            .any(|l| l.contains("batch split into lanes")),
        "{}",
        killed.log_text()
    );

    stream.produce(&setup, backlog..EVENTS).await;
    let _restarted = spawn_processor();
    db.wait_count(
        "every event to be applied",
        processed,
        EVENTS as i64,
        Duration::from_secs(300),
    )
    .await;
    assert_books_exact(&db, &stream).await;
    drop(api);
    db.drop_db().await;
}

/// One of two members stopped as a service manager stops it (SIGTERM): it finishes its
/// batch, leaves the group at once (not after the session timeout) and exits 0; the other
/// is handed every partition by the coordinator and the books are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_of_two_processors_hands_its_partitions_over_and_exits_0() {
    use dhanman_processors::Processor;
    const INVOICES: usize = 600;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (api, org) = api_with_org(&setup, "Graceful Society").await;
    let codec = setup.codec();
    let customer = Uuid::now_v7();
    let mut records = Vec::with_capacity(INVOICES);
    for i in 0..INVOICES {
        let e = invoice_created(org, customer, &format!("G-{i}"), "10.00");
        records.push((e.key(), codec.encode(&e).await.unwrap()));
    }
    let invoices = setup.topic(topics::INVOICES);
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    // Every partition of every topic the ledger reads (the tests' topics have 4 each).
    let every_partition = format!(
        "partitions={} ",
        4 * dhanman_processors::ledger::Ledger::default().topics().len()
    );

    let spawn_processor = || setup.spawn(&["process", "ledger"]);
    let mut a = spawn_processor();
    let b = spawn_processor();
    wait_owning("both processors", &[&a, &b]).await;
    let half = INVOICES / 2;
    produce_all(
        &producer(),
        records[..half]
            .iter()
            .map(|(k, v)| (invoices.clone(), k.as_str(), v.as_slice())),
    )
    .await;
    let processed = "select count(*) from applied_events";
    db.wait_count(
        "the first half",
        processed,
        half as i64,
        Duration::from_secs(90),
    )
    .await;
    let b_assignments = b.log_text().matches("partitions assigned").count();

    let status = a.stop().await;
    assert!(status.success(), "{status}: {}", a.log_text());
    let a_log = a.log_text();
    assert!(a_log.contains("left the consumer group"), "{a_log}");
    // Gone at once, not left to time out: only b is a member now.
    let described = describe_group(&group).await;
    assert_eq!(described.members.len(), 1, "{described:?}");
    assert!(
        described.members[0]
            .client_id
            .ends_with(&format!("-{}", b.child.id().unwrap())),
        "{described:?}"
    );

    // The coordinator hands b everything a held.
    eventually(
        "b to be assigned every partition",
        Duration::from_secs(60),
        || {
            let log = b.log_text();
            let every_partition = &every_partition;
            async move {
                log.lines()
                    .filter(|l| l.contains("partitions assigned"))
                    .skip(b_assignments)
                    .any(|l| l.contains(every_partition.as_str()))
                    .then_some(())
            }
        },
    )
    .await;
    produce_all(
        &producer(),
        records[half..]
            .iter()
            .map(|(k, v)| (invoices.clone(), k.as_str(), v.as_slice())),
    )
    .await;
    db.wait_count(
        "every invoice",
        processed,
        INVOICES as i64,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        db.count("select count(*) from journal_entries").await as usize,
        INVOICES
    );
    let (debits, credits): (Decimal, Decimal) =
        sqlx::query_as("select sum(debit), sum(credit) from postings")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let expected = Decimal::new(1000, 2) * Decimal::from(INVOICES as i64);
    assert_eq!((debits, credits), (expected, expected));
    drop((b, api));
    db.drop_db().await;
}
