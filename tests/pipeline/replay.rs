//! A dry run over nine applied invoices says 9 in range, 9 applied, 0 to apply; executed
//! twice, it applies nothing and the trial balance and journal are unchanged; for the
//! notifier, which sends nothing for them, the nine are ignored, dry or executed, and the
//! three payments, whose receipts it logged, count as applied and add no delivery; the live
//! groups' offsets never move; a bounded range on one partition has exactly its records;
//! the users projection wiped by hand is rebuilt by a replay; a time an hour ago covers
//! every record, and a time past the end is an empty range; a processor that does not read
//! the topic, an unknown processor and `--from now` are refused

use serde_json::{Value, json};

use crate::helpers::*;

struct Run {
    ok: bool,
    summary: Value,
    stderr: String,
}

async fn replay(setup: &Setup, args: &[&str]) -> Run {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = dhanman(setup, &all).await;
    Run {
        ok: run.ok,
        summary: run.json(),
        stderr: run.stderr,
    }
}

/// The stored offsets of the groups of the processors replayed here.
async fn offsets(db: &TestDb) -> Vec<(String, String, i32, i64)> {
    sqlx::query_as(
        "select group_id, topic, partition, next_offset from consumer_offsets
          where group_id like '%dhanman.ledger' or group_id like '%dhanman.users'
          order by 1, 2, 3",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_survey_apply_nothing_twice_rebuild_projections_and_leave_the_group_alone() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Birch Gardens").await;
    let api = Api::new(&setup.base_url(), &key);
    let mut tokens = Vec::new();
    let mut customers = Vec::new();
    for name in ["Asha", "Bela", "Chirag"] {
        let customer = api.customer(name).await;
        customers.push(customer);
        for amount in ["100.00", "250.50", "75.25"] {
            let (invoice_id, token) = invoice(&api, customer, amount).await;
            tokens.push(token);
            if amount == "250.50" {
                let r = api
                    .post(
                        "/v1/payments/manual",
                        json!({"invoice_id": invoice_id, "amount": amount}),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                tokens.push(r.body["consistency_token"].as_str().unwrap().to_string());
            }
        }
    }
    let user = api
        .post(
            "/v1/users",
            json!({"email": "mgr@birch.example", "name": "Meera", "role": "manager"}),
        )
        .await;
    let user_token = user.body["consistency_token"].as_str().unwrap().to_string();
    for token in &tokens {
        let r = api
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = api
        .get(&format!("/v1/users?consistent_with={user_token}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The administrator's `UserCreated` (from `orgs create`) has no token to wait on.
    db.wait_count(
        "both users in the projection",
        "select count(*) from user_directory",
        2,
        std::time::Duration::from_secs(30),
    )
    .await;
    let trial = api.get("/v1/trial-balance").await.body;
    let entries = db.count("select count(*) from journal_entries").await;
    let group_offsets = offsets(&db).await;
    let invoices = setup.topic("dhanman.sales.invoices");

    // A dry run: nine invoices in range, all applied already, nothing changes.
    let dry = replay(
        &setup,
        &[
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--from",
            "beginning",
        ],
    )
    .await;
    assert!(dry.ok, "{}", dry.stderr);
    let s = &dry.summary;
    assert_eq!(s["executed"], false, "{s}");
    assert_eq!(s["records"], 9, "{s}");
    let created = &s["survey"]["by_type"]["dhanman.sales.InvoiceCreated"];
    assert_eq!(
        (
            &created["in_range"],
            &created["already_applied"],
            &created["would_apply"]
        ),
        (&json!(9), &json!(9), &json!(0)),
        "{s}"
    );
    // Executed, twice: nothing applied again, the books as they were.
    for _ in 0..2 {
        let run = replay(
            &setup,
            &[
                "--processor",
                "ledger",
                "--topic",
                &invoices,
                "--from",
                "beginning",
                "--execute",
            ],
        )
        .await;
        assert!(run.ok, "{}", run.stderr);
        assert_eq!(run.summary["applied"], 0, "{}", run.summary);
        assert_eq!(run.summary["skipped_as_applied"], 9, "{}", run.summary);
    }
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries
    );
    assert_eq!(api.get("/v1/trial-balance").await.body, trial);
    assert_eq!(
        offsets(&db).await,
        group_offsets,
        "the live group's offsets moved"
    );

    // The notifier sends nothing for an invoice's own event (its email is a command of its
    // own): those count as ignored. Its receipts are gated by their deliveries: the three
    // payments count as applied. Dry or executed, nothing is applied and no receipt added.
    // (Only receipts are counted: the invoices' reminders may fall due meanwhile.)
    let receipts = "select count(*) from notification_deliveries where template = 'receipt'";
    db.wait_count(
        "the three receipts logged",
        receipts,
        3,
        std::time::Duration::from_secs(30),
    )
    .await;
    let payments = setup.topic("dhanman.sales.payments");
    // (topic, record type, records in range, ignored or else applied before)
    for (topic, record, n, ignored) in [
        (&invoices, "dhanman.sales.InvoiceCreated", 9, true),
        (&payments, "dhanman.sales.PaymentReceived", 3, false),
    ] {
        let (ignored, before) = if ignored { (n, 0) } else { (0, n) };
        for execute in [false, true] {
            let mut args = vec![
                "--processor",
                "notifier",
                "--topic",
                topic,
                "--from",
                "beginning",
            ];
            if execute {
                args.push("--execute");
            }
            let run = replay(&setup, &args).await;
            assert!(run.ok, "{}", run.stderr);
            let of_type = &run.summary["survey"]["by_type"][record];
            assert_eq!(
                (
                    &of_type["in_range"],
                    &of_type["already_applied"],
                    &of_type["would_apply"],
                    &of_type["ignored"]
                ),
                (&json!(n), &json!(before), &json!(0), &json!(ignored)),
                "{}",
                run.summary
            );
            if execute {
                let s = &run.summary;
                assert_eq!(
                    (&s["ignored"], &s["skipped_as_applied"], &s["applied"]),
                    (&json!(ignored), &json!(before), &json!(0)),
                    "{s}"
                );
            }
        }
    }
    assert_eq!(db.count(receipts).await, 3);

    // A bounded range on one partition: only its records.
    let (partition, end): (i32, i64) = sqlx::query_as(
        "select partition, next_offset from consumer_offsets
          where topic = $1 and next_offset > 1 order by partition limit 1",
    )
    .bind(&invoices)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let part = partition.to_string();
    let to = format!("offset:{end}");
    let bounded = replay(
        &setup,
        &[
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--partition",
            &part,
            "--from",
            "offset:1",
            "--to",
            &to,
        ],
    )
    .await;
    assert!(bounded.ok, "{}", bounded.stderr);
    assert_eq!(bounded.summary["records"], end - 1, "{}", bounded.summary);

    // A projection lost (by hand, as after a bug): the replay rebuilds it.
    sqlx::query("delete from user_directory")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("delete from processed_events where processor = 'users'")
        .execute(&db.pool)
        .await
        .unwrap();
    let users_topic = setup.topic("dhanman.common.users");
    let rebuilt = replay(
        &setup,
        &[
            "--processor",
            "users",
            "--topic",
            &users_topic,
            "--from",
            "beginning",
            "--execute",
        ],
    )
    .await;
    assert!(rebuilt.ok, "{}", rebuilt.stderr);
    assert_eq!(rebuilt.summary["applied"], 2, "{}", rebuilt.summary);
    assert_eq!(db.count("select count(*) from user_directory").await, 2);

    // Time bounds go through offsets-for-times: an hour ago is before every record; a time
    // past the end is the end of every partition, an empty range.
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let by_time = replay(
        &setup,
        &[
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--from",
            &format!("time:{hour_ago}"),
        ],
    )
    .await;
    assert!(by_time.ok, "{}", by_time.stderr);
    assert_eq!(by_time.summary["records"], 9, "{}", by_time.summary);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let past_end = replay(
        &setup,
        &[
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--from",
            &format!("time:{later}"),
            "--execute",
        ],
    )
    .await;
    assert!(past_end.ok, "{}", past_end.stderr);
    assert_eq!(past_end.summary["records"], 0, "{}", past_end.summary);
    assert_eq!(past_end.summary["applied"], 0, "{}", past_end.summary);

    // Bad input: a processor that does not read the topic, an unknown processor, bad bounds.
    let wrong = replay(
        &setup,
        &[
            "--processor",
            "users",
            "--topic",
            &invoices,
            "--from",
            "beginning",
        ],
    )
    .await;
    assert!(
        !wrong.ok && wrong.stderr.contains("does not read"),
        "{}",
        wrong.stderr
    );
    let unknown = replay(
        &setup,
        &[
            "--processor",
            "nobody",
            "--topic",
            &invoices,
            "--from",
            "beginning",
        ],
    )
    .await;
    assert!(
        !unknown.ok && unknown.stderr.contains("unknown processor"),
        "{}",
        unknown.stderr
    );
    let bad = replay(
        &setup,
        &[
            "--processor",
            "ledger",
            "--topic",
            &invoices,
            "--from",
            "now",
        ],
    )
    .await;
    assert!(!bad.ok);
    assert_eq!(offsets(&db).await, group_offsets);
    drop(up);
    db.drop_db().await;
}
