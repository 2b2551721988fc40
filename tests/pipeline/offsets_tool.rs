//! `dhanman offsets show|reset` against a running pipeline: the plan first, nothing moved
//! without `--execute` or while the group has a live member; a reset moves Postgres and
//! Kafka alike, and a rewound ledger re-reads without posting anything twice.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use crate::helpers::*;

async fn offsets(setup: &Setup, args: &[&str]) -> CliRun {
    let mut all = vec!["offsets"];
    all.extend_from_slice(args);
    dhanman(setup, &all).await
}

/// The group's next offsets on a topic, from Postgres, by partition.
async fn stored(db: &TestDb, group: &str, topic: &str) -> Vec<(i32, i64)> {
    sqlx::query_as(
        "select partition, next_offset from consumer_offsets
          where group_id = $1 and topic = $2 order by partition",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_shown_planned_refused_while_live_and_reset_in_both_places() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let mut ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Oak Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    let mut last = String::new();
    for _ in 0..6 {
        last = invoice(&api, customer, "50.00").await.1;
    }
    let r = api
        .get(&format!("/v1/trial-balance?consistent_with={last}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    let invoices = setup.topic("dhanman.sales.invoices");
    let before = stored(&db, &group, &invoices).await;
    assert_eq!(before.iter().map(|(_, o)| o).sum::<i64>(), 6, "{before:?}");

    // Show: where the group is, against the log.
    let shown = offsets(
        &setup,
        &["show", "--group", &group, "--topic", &invoices, "--json"],
    )
    .await;
    assert!(shown.ok, "{}", shown.stderr);
    let report: Value = serde_json::from_str(&shown.stdout).unwrap();
    for p in report["partitions"].as_array().unwrap() {
        assert_eq!(p["target"], p["log_end"], "{p}");
    }
    assert_eq!(
        report["live_members"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    // Each member says what it holds (with its next beat): the ledger alone holds every
    // partition, and the table lists it under the offsets.
    let every: Vec<String> = (0..4).map(|p| format!("{invoices}:{p}")).collect();
    let table = eventually(
        "the ledger to report the partitions it holds",
        Duration::from_secs(30),
        || {
            let (setup, group, every) = (setup.clone(), group.clone(), every.clone());
            async move {
                let shown = offsets(&setup, &["show", "--group", &group]).await;
                assert!(shown.ok, "{}", shown.stderr);
                let holds = shown
                    .stdout
                    .lines()
                    .find(|l| l.contains(" holds "))
                    .unwrap_or_default()
                    .to_string();
                every
                    .iter()
                    .all(|p| holds.split_whitespace().any(|w| w == p))
                    .then_some(shown.stdout)
            }
        },
    )
    .await;
    assert!(table.contains("1 live member(s)"), "{table}");

    // Refused while the ledger runs, with nothing moved.
    let refused = offsets(
        &setup,
        &[
            "reset",
            "--group",
            &group,
            "--topic",
            &invoices,
            "--to-earliest",
            "--execute",
        ],
    )
    .await;
    assert!(!refused.ok);
    assert!(refused.stderr.contains("live member"), "{}", refused.stderr);
    assert!(
        refused.stdout.contains("NEW-OFFSET"),
        "the plan comes first: {}",
        refused.stdout
    );
    assert_eq!(stored(&db, &group, &invoices).await, before);

    // Stopped: once its heartbeat is older than the session timeout, the group is idle.
    ledger.kill().await;
    eventually(
        "the ledger's membership to lapse",
        Duration::from_secs(30),
        || {
            let pool = db.pool.clone();
            let group = group.clone();
            async move {
                let (live,): (i64,) = sqlx::query_as(
                    "select count(*) from consumer_members
                  where group_id = $1 and last_seen > now() - interval '10 seconds'",
                )
                .bind(&group)
                .fetch_one(&pool)
                .await
                .unwrap();
                (live == 0).then_some(())
            }
        },
    )
    .await;
    // A plan without --execute moves nothing.
    let dry = offsets(
        &setup,
        &[
            "reset",
            "--group",
            &group,
            "--topic",
            &invoices,
            "--to-earliest",
        ],
    )
    .await;
    assert!(dry.ok, "{}", dry.stderr);
    assert!(dry.stderr.contains("dry run"), "{}", dry.stderr);
    assert_eq!(stored(&db, &group, &invoices).await, before);
    // Back two records on partition of the first stored row, by shift.
    let (p0, o0) = before[0];
    let shifted = offsets(
        &setup,
        &[
            "reset",
            "--group",
            &group,
            "--topic",
            &format!("{invoices}:{p0}"),
            "--shift-by",
            "-2",
            "--execute",
        ],
    )
    .await;
    assert!(shifted.ok, "{}", shifted.stderr);
    let now = stored(&db, &group, &invoices).await;
    assert_eq!(
        now.iter().find(|(p, _)| *p == p0).unwrap().1,
        (o0 - 2).max(0)
    );
    // An hour ago is before every record: the log start, in Postgres and in Kafka.
    let reset = offsets(
        &setup,
        &[
            "reset",
            "--group",
            &group,
            "--topic",
            &invoices,
            "--by-duration",
            "1h",
            "--execute",
        ],
    )
    .await;
    assert!(reset.ok, "{}", reset.stderr);
    let rewound = stored(&db, &group, &invoices).await;
    assert!(rewound.iter().all(|(_, o)| *o == 0), "{rewound:?}");
    let committed = tokio::task::spawn_blocking({
        let (group, invoices) = (group.clone(), invoices.clone());
        move || {
            let consumer: BaseConsumer = dhanman_connectors::kafka::client_config(&bootstrap())
                .set("group.id", &group)
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition(&invoices, p);
            }
            consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap()
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(-1))
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    for (p, _) in &rewound {
        assert_eq!(
            committed[*p as usize], 0,
            "Kafka's committed offsets: {committed:?}"
        );
    }

    // The ledger re-reads the rewound range; the gate posts nothing twice.
    let entries = db.count("select count(*) from journal_entries").await;
    let _ledger = setup.spawn(&["process", "ledger"]);
    eventually(
        "the ledger to catch up again",
        Duration::from_secs(60),
        || {
            let db_pool = db.pool.clone();
            let (group, invoices) = (group.clone(), invoices.clone());
            let before = before.clone();
            async move {
                let now: Vec<(i32, i64)> = sqlx::query_as(
                    "select partition, next_offset from consumer_offsets
                  where group_id = $1 and topic = $2 order by partition",
                )
                .bind(&group)
                .bind(&invoices)
                .fetch_all(&db_pool)
                .await
                .unwrap();
                // The reset wrote every partition of the topic; those without records stay 0.
                let caught_up = before.iter().all(|b| now.contains(b))
                    && now
                        .iter()
                        .all(|(p, o)| *o == 0 || before.iter().any(|b| b.0 == *p));
                caught_up.then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries
    );
    let balance = api.get(&format!("/v1/customers/{customer}/balance")).await;
    assert_eq!(
        balance.body["balances"][0]["balance"], "300.00",
        "{}",
        balance.body
    );

    // Bad input: a missing target, two targets, a partition that does not exist.
    for args in [
        vec!["reset", "--group", &group],
        vec!["reset", "--group", &group, "--to-earliest", "--to-latest"],
    ] {
        let bad = offsets(&setup, &args).await;
        assert!(!bad.ok, "{args:?}");
    }
    let missing = offsets(
        &setup,
        &[
            "show",
            "--group",
            &group,
            "--topic",
            &format!("{invoices}:9"),
        ],
    )
    .await;
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("no partition 9"),
        "{}",
        missing.stderr
    );
    db.drop_db().await;
}
