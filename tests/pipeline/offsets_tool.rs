//! `offsets show` against the log, with the member (its client id naming its process) and
//! every partition it holds, from the broker; `reset` while the ledger runs is refused
//! naming the member, with the plan printed and nothing moved; without `--execute` nothing
//! moves; `--shift-by -2` on one partition; `--by-duration 1h` rewinds Postgres and Kafka's
//! committed offsets to the log start; the restarted ledger re-reads the range and posts
//! nothing twice; a missing or doubled target and an unknown partition are refused; for
//! every reset target (`--to-earliest`, `--to-latest`, `--to-offset`, `--shift-by`,
//! `--to-datetime`, `--by-duration`) the plan equals the one `kafka-consumer-groups
//! --reset-offsets --dry-run` prints

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
    assert_eq!(report["members"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["offsets_in"], "postgres", "{report}");
    let client_id = report["members"][0]["client_id"].as_str().unwrap();
    assert!(
        client_id.ends_with(&format!("-{}", ledger.child.id().unwrap())),
        "the member's client id names its process: {client_id}"
    );
    // The coordinator says what each member holds: the ledger alone holds every
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
    assert!(table.contains("1 member(s)"), "{table}");

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
    assert!(refused.stderr.contains("1 member(s)"), "{}", refused.stderr);
    assert!(
        refused.stdout.contains("NEW-OFFSET"),
        "the plan comes first: {}",
        refused.stdout
    );
    assert_eq!(stored(&db, &group, &invoices).await, before);

    // Killed: once its session has timed out, the coordinator empties the group.
    ledger.kill().await;
    wait_group_empty(&group, Duration::from_secs(60)).await;
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
            let consumer: BaseConsumer = dhanman_plumbing::kafka::client_config(&bootstrap())
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

/// Kafka's `kafka-consumer-groups --reset-offsets --dry-run` referees `dhanman offsets
/// reset`: for the ledger's group, stopped after reading twelve invoices whose timestamps
/// lie twenty minutes apart, every reset target plans the same new offset on every
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_plans_equal_kafka_consumer_groups_dry_runs_for_every_target() {
    use dhanman_schemas::events::Record;
    use rdkafka::producer::FutureRecord;
    use std::collections::BTreeMap;

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let (_api, org) = api_with_org(&setup, "Referee Residency").await;
    let codec = setup.codec();
    let invoices = setup.topic("dhanman.sales.invoices");
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    dhanman_connectors::kafka::ensure_topics(&bootstrap(), std::slice::from_ref(&invoices), 4)
        .await
        .unwrap();
    // Twelve invoices, 240 down to 20 minutes old, three on each partition.
    let now = chrono::Utc::now();
    let producer = producer();
    for i in 0..12i64 {
        let e = invoice_created(org, uuid::Uuid::now_v7(), &format!("R-{i}"), "10.00");
        let at = now - chrono::Duration::minutes(240 - 20 * i);
        producer
            .send(
                FutureRecord::to(&invoices)
                    .partition((i % 4) as i32)
                    .key(&e.key())
                    .payload(&codec.encode(&e).await.unwrap())
                    .timestamp(at.timestamp_millis()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut ledger = setup.spawn(&["process", "ledger"]);
    db.wait_count(
        "the ledger to post the twelve",
        "select count(*) from journal_entries",
        12,
        Duration::from_secs(90),
    )
    .await;
    // Settled: Kafka's committed offsets have caught up with Postgres's.
    eventually(
        "Kafka's committed offsets to reach the log end",
        Duration::from_secs(60),
        || {
            let group = group.clone();
            async move {
                let out = crate::kafka::kafka_tool(
                    "consumer-groups",
                    &[
                        "--bootstrap-server",
                        &bootstrap(),
                        "--describe",
                        "--group",
                        &group,
                    ],
                )
                .await;
                let rows: Vec<Vec<String>> = crate::kafka::group_rows(&out, &group)
                    .into_iter()
                    .filter(|c| c.len() >= 6 && c[3] != "-")
                    .collect();
                let settled = rows.len() == 4 && rows.iter().all(|c| c[5] == "0");
                settled.then_some(())
            }
        },
    )
    .await;
    assert!(ledger.stop().await.success());
    wait_group_empty(&group, Duration::from_secs(30)).await;

    let at = (now - chrono::Duration::minutes(90))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let targets: [(&[&str], &[&str]); 6] = [
        (&["--to-earliest"], &["--to-earliest"]),
        (&["--to-latest"], &["--to-latest"]),
        (&["--to-offset", "1"], &["--to-offset", "1"]),
        (&["--shift-by", "-2"], &["--shift-by", "-2"]),
        (&["--to-datetime", &at], &["--to-datetime", &at]),
        (&["--by-duration", "150m"], &["--by-duration", "PT150M"]),
    ];
    for (mine, theirs) in targets {
        let mut args = vec!["reset", "--group", &group, "--topic", &invoices, "--json"];
        args.extend_from_slice(mine);
        let run = offsets(&setup, &args).await;
        assert!(run.ok, "{mine:?}: {}", run.stderr);
        let planned: BTreeMap<i64, i64> = run.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["partition"].as_i64().unwrap(),
                    p["target"].as_i64().unwrap(),
                )
            })
            .collect();
        let kafka = bootstrap();
        let mut kafka_args = vec![
            "--bootstrap-server",
            &kafka,
            "--group",
            &group,
            "--topic",
            &invoices,
            "--reset-offsets",
            "--dry-run",
        ];
        kafka_args.extend_from_slice(theirs);
        let out = crate::kafka::kafka_tool("consumer-groups", &kafka_args).await;
        let refereed: BTreeMap<i64, i64> = crate::kafka::group_rows(&out, &group)
            .into_iter()
            .filter(|c| c.len() == 4 && c[1] == invoices)
            .map(|c| (c[2].parse().unwrap(), c[3].parse().unwrap()))
            .collect();
        assert_eq!(refereed.len(), 4, "{theirs:?}: {out}");
        assert_eq!(planned, refereed, "{mine:?} against {theirs:?}");
    }
    // The dry runs moved nothing: still at the log end.
    let stored = stored(&db, &group, &invoices).await;
    assert_eq!(stored.iter().map(|(_, o)| o).sum::<i64>(), 12, "{stored:?}");
    db.drop_db().await;
}
