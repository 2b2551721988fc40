//! With the ledger process killed, twenty invoices wait: `dhanman lag --json`, `GET
//! /v1/lag` and `/metrics` (`kafka_consumergroup_group_lag`, `..._max_lag_seconds`) show
//! the lag in records and a positive age, no ETA; a non-admin key is 403; the ledger
//! restarted, the CLI and the API see it drain to zero; with two API processes on one
//! database only the first exports the queue gauges (`dhanman_sampler_active` 1 there, 0 in
//! the second), the second says it waits, and it takes over once the first is killed;
//! `kafka-consumer-groups --describe` and `dhanman lag --json` agree, partition by
//! partition, on committed offset, log end, lag and the member holding it, for the ledger's
//! group and for a group that is not ours (its offsets from Kafka), whose offset stored past
//! the log's end is counted from the end and shown as stored; with a window of three
//! samples, the ledger's group and another client's (a consumer in the test under a name
//! without the topic prefix) are both judged OK on a full window, then the ledger stopped
//! is STOP (group ERR, coordinator state `Empty`) while the other keeps up and stays OK and
//! not ours, in `dhanman lag --json`, `GET /v1/lag` and
//! `dhanman_lag_group_status`/`dhanman_lag_partitions`; the other client's consumer gone,
//! its group stays reported and is judged STOP

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// `dhanman lag --json` for one group: the group's entry of the report.
async fn lag_cli(setup: &Setup, group: &str) -> Value {
    let run = dhanman(setup, &["lag", "--json", "--group", group]).await;
    assert!(run.ok, "{}", run.stderr);
    let report = run.json();
    report["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == group))
        .cloned()
        .unwrap_or_else(|| panic!("no group {group} in {report}"))
}

/// The sum of a metric's samples for the group.
fn metric(text: &str, name: &str, group: &str) -> f64 {
    let label = format!("group=\"{group}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_the_ledger_is_stopped_and_drains_after() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let sampled = [("DHANMAN_LAG_INTERVAL_MS", "200")];
    let api_proc = setup.spawn_with_env(&["api"], &sampled);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let mut ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Maple Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let group = format!("{}dhanman.ledger", setup.topic_prefix);
    let customer = api.customer("Asha").await;
    let (_, token) = invoice(&api, customer, "100.00").await;
    ledger_applied(&api, &token).await;

    // The ledger stops; twenty invoices wait on the topic.
    ledger.kill().await;
    for _ in 0..20 {
        invoice(&api, customer, "10.00").await;
    }
    let invoices = setup.topic("dhanman.sales.invoices");
    let waiting = eventually(
        "the invoices to wait on the topic",
        Duration::from_secs(30),
        || {
            let setup = setup.clone();
            let (group, invoices) = (group.clone(), invoices.clone());
            async move {
                let g = lag_cli(&setup, &group).await;
                let on_topic: i64 = g["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["topic"] == invoices.as_str())
                    .map(|p| p["lag"].as_i64().unwrap())
                    .sum();
                (on_topic == 20).then_some(g)
            }
        },
    )
    .await;
    assert!(
        waiting["max_lag_seconds"].as_f64().unwrap() > 0.0,
        "{waiting}"
    );
    assert_eq!(waiting["eta_seconds"], Value::Null, "{waiting}");
    for p in waiting["partitions"].as_array().unwrap() {
        assert_eq!(
            p["lag"].as_i64().unwrap(),
            p["log_end"].as_i64().unwrap() - p["committed"].as_i64().unwrap(),
            "{p}"
        );
    }
    // The API's sampler sees it too: `GET /v1/lag` and the kafka-lag-exporter metrics.
    let seen = eventually("the API to sample the lag", Duration::from_secs(30), || {
        let api = api.clone();
        let group = group.clone();
        async move {
            let r = api.get(&format!("/v1/lag?group={group}")).await;
            let lag = r.body["groups"][0]["lag"].as_i64().unwrap_or(0);
            (lag >= 20).then_some(r.body)
        }
    })
    .await;
    assert_eq!(seen["groups"][0]["group"], group.as_str(), "{seen}");
    // The API process's own sampler exports the gauges (each sample reads the broker).
    let url = format!("{}/metrics", setup.base_url());
    let text = eventually("the lag gauges", Duration::from_secs(30), || {
        let (url, group) = (url.clone(), group.clone());
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            (metric(&text, "kafka_consumergroup_group_lag", &group) >= 20.0).then_some(text)
        }
    })
    .await;
    assert!(metric(&text, "kafka_consumergroup_group_max_lag_seconds", &group) > 0.0);
    // Lag is the pipeline's, not an organization's: only an administrator reads it.
    let accountant = crate::keys::invite(&db, &api, "acc@maple.example", "Acc", "accountant")
        .await
        .api;
    assert_eq!(accountant.get("/v1/lag").await.status, 403);

    // The ledger is back: the lag drains to zero, seen by the CLI and by the API.
    let _ledger = setup.spawn(&["process", "ledger"]);
    eventually("the lag to drain", Duration::from_secs(60), || {
        let setup = setup.clone();
        let group = group.clone();
        async move { (lag_cli(&setup, &group).await["lag"] == 0).then_some(()) }
    })
    .await;
    eventually("the API to see the drain", Duration::from_secs(30), || {
        let api = api.clone();
        let group = group.clone();
        async move {
            let r = api.get(&format!("/v1/lag?group={group}")).await;
            (r.body["groups"][0]["lag"] == 0).then_some(())
        }
    })
    .await;
    db.drop_db().await;
}

/// Whether a process's `/metrics` carries the outbox gauge, which only the sampling
/// process sets.
async fn exports_queue_gauges(setup: &Setup) -> bool {
    let text = metrics_text(setup).await;
    text.lines().any(|l| l.starts_with("dhanman_outbox_depth "))
}

/// The process's `dhanman_sampler_active`.
async fn sampler_active(setup: &Setup) -> Option<f64> {
    let text = metrics_text(setup).await;
    text.lines()
        .find_map(|l| l.strip_prefix("dhanman_sampler_active "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_process_samples_and_another_takes_over_when_it_goes() {
    let db = TestDb::new().await;
    let first = Setup::new(&db);
    let second = Setup {
        http_port: free_port(),
        ..first.clone()
    };
    let sampled = [("DHANMAN_LAG_INTERVAL_MS", "200")];
    let mut leader = first.spawn_with_env(&["api"], &sampled);
    first.wait_ready(&leader).await;
    eventually("the first API to sample", Duration::from_secs(30), || {
        let first = first.clone();
        async move { exports_queue_gauges(&first).await.then_some(()) }
    })
    .await;

    // A second API process of the same deployment finds the sampler taken and waits.
    let follower = second.spawn_with_env(&["api"], &sampled);
    second.wait_ready(&follower).await;
    follower
        .wait_for_log("another process samples lag", Duration::from_secs(30))
        .await;
    assert!(
        !exports_queue_gauges(&second).await,
        "only the sampling process exports the queue gauges"
    );
    assert_eq!(sampler_active(&first).await, Some(1.0));
    assert_eq!(sampler_active(&second).await, Some(0.0));
    assert!(!follower.log_text().contains("this process samples lag"));

    // The sampling process dies: the other one takes over.
    leader.kill().await;
    eventually(
        "the second API to take over",
        Duration::from_secs(30),
        || {
            let second = second.clone();
            async move { exports_queue_gauges(&second).await.then_some(()) }
        },
    )
    .await;
    assert!(
        follower.log_text().contains("this process samples lag"),
        "{}",
        follower.log_text()
    );
    assert_eq!(sampler_active(&second).await, Some(1.0));
    db.drop_db().await;
}

/// One row of `kafka-consumer-groups --describe` as the referee prints it, and the same
/// fields of `dhanman lag --json`: (current offset, log end, lag, consumer id, host,
/// client id) by (topic, partition).
type Described = std::collections::BTreeMap<(String, i64), (i64, i64, i64, String, String, String)>;

/// What Kafka's own tool says of `group`: the partitions it has committed an offset on.
async fn referee(group: &str) -> Described {
    let out = crate::kafka::kafka_tool(
        "consumer-groups",
        &[
            "--bootstrap-server",
            &bootstrap(),
            "--describe",
            "--group",
            group,
        ],
    )
    .await;
    crate::kafka::group_rows(&out, group)
        .into_iter()
        .filter(|c| c.len() == 9 && c[3] != "-")
        .map(|c| {
            (
                (c[1].clone(), c[2].parse().unwrap()),
                (
                    c[3].parse().unwrap(),
                    c[4].parse().unwrap(),
                    c[5].parse().unwrap(),
                    c[6].clone(),
                    c[7].clone(),
                    c[8].clone(),
                ),
            )
        })
        .collect()
}

/// The same fields from `dhanman lag --json`.
fn ours(group: &Value) -> Described {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                (text(&p["topic"]), p["partition"].as_i64().unwrap()),
                (
                    p["committed"].as_i64().unwrap(),
                    p["log_end"].as_i64().unwrap(),
                    p["lag"].as_i64().unwrap(),
                    text(&p["consumer_id"]),
                    text(&p["host"]),
                    text(&p["client_id"]),
                ),
            )
        })
        .collect()
}

/// Kafka's `kafka-consumer-groups --describe` referees `dhanman lag --json`: once the
/// pipeline has settled they agree, partition by partition, on committed offset, log end,
/// lag and the member holding it (consumer id, host, client id), for the ledger's group
/// (offsets from Postgres) and for a group that is not ours (a consumer in this test,
/// offsets from Kafka), which `dhanman lag` reports too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_agrees_with_kafka_consumer_groups_for_our_group_and_a_foreign_one() {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let _ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Cedar Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let mut last = String::new();
    for i in 0..12 {
        let customer = api.customer(&format!("Resident {i}")).await;
        last = invoice(&api, customer, "75.00").await.1;
    }
    ledger_applied(&api, &last).await;

    // A group that is not the pipeline's: it reads five invoices, commits, and stays.
    let invoices = setup.topic("dhanman.sales.invoices");
    let foreign = format!("{}foreign-reader", setup.topic_prefix);
    let reader: StreamConsumer = dhanman_plumbing::kafka::client_config(&bootstrap())
        .set("group.id", &foreign)
        .set("client.id", "foreign-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&invoices]).unwrap();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .expect("a record within a minute")
            .unwrap();
        reader
            .commit_message(&m, CommitMode::Sync)
            .expect("commit the foreign group's offset");
    }

    let ledger = format!("{}dhanman.ledger", setup.topic_prefix);
    for group in [ledger.as_str(), foreign.as_str()] {
        // Settled: the ledger's offsets reach Kafka after each batch's commit. Polled until
        // the two agree; the last look is what a disagreement reports.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (kafka, mine) = loop {
            let mut mine = ours(&lag_cli(&setup, group).await);
            let kafka = referee(group).await;
            // A partition the ledger has no offset on yet counts from the log's start in
            // our report (it reads from there); Kafka shows it without an offset. Settled,
            // such a partition holds nothing.
            mine.retain(|at, (committed, log_end, lag, ..)| {
                kafka.contains_key(at) || (*lag != 0 || committed != log_end)
            });
            if kafka == mine || std::time::Instant::now() > deadline {
                break (kafka, mine);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            kafka, mine,
            "{group}: kafka-consumer-groups (left), dhanman lag"
        );
        assert!(!kafka.is_empty(), "{group}: nothing committed");
    }
    // The foreign group's offsets come from Kafka, and its member is the test's consumer.
    let g = lag_cli(&setup, &foreign).await;
    assert_eq!(g["offsets_in"], "kafka", "{g}");
    assert_eq!(g["state"], "Stable", "{g}");
    assert_eq!(g["members"][0]["client_id"], "foreign-reader", "{g}");
    let committed: i64 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_i64().unwrap())
        .sum();
    assert_eq!(committed, 5, "{g}");

    // An offset stored past the log's end (a topic recreated under the group): counted from
    // the end, where the group's consumer goes, and shown as stored rather than hidden.
    let first = &g["partitions"][0];
    let (partition, log_end) = (
        i32::try_from(first["partition"].as_i64().unwrap()).unwrap(),
        first["log_end"].as_i64().unwrap(),
    );
    let mut past = rdkafka::TopicPartitionList::new();
    past.add_partition_offset(&invoices, partition, rdkafka::Offset::Offset(log_end + 100))
        .unwrap();
    reader
        .commit(&past, CommitMode::Sync)
        .expect("commit an offset past the end");
    let g = lag_cli(&setup, &foreign).await;
    let shown = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"] == partition)
        .cloned()
        .unwrap();
    assert_eq!(shown["stored_outside_log"], log_end + 100, "{shown}");
    assert_eq!(shown["committed"], log_end, "{shown}");
    assert_eq!(shown["lag"], 0, "{shown}");
    let inside = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("stored_outside_log").is_some())
        .count();
    assert_eq!(inside, 1, "only that partition is outside its log: {g}");
    let run = dhanman(&setup, &["lag", "--group", &foreign]).await;
    assert!(run.ok, "{}", run.stderr);
    let note = format!(
        "{foreign} {invoices}[{partition}]: stored offset {} is past the log's end ({log_end})",
        log_end + 100
    );
    assert!(run.stdout.contains(&note), "{}", run.stdout);
    drop(reader);
    db.drop_db().await;
}

/// A group's entry of a lag report (`dhanman lag --json` or `GET /v1/lag`).
fn group_of(report: &Value, group: &str) -> Option<Value> {
    report["groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)
        .cloned()
}

/// `dhanman lag --json` judged over a window of three samples.
async fn judged(setup: &Setup) -> Value {
    let run = dhanman(setup, &["lag", "--json", "--lag-window", "3"]).await;
    assert!(run.ok, "{}", run.stderr);
    run.json()
}

/// Whether the group is ERR with every lagging partition STOP and every other OK, all
/// judged on a full window.
fn stopped(g: &Value) -> bool {
    let partitions = g["partitions"].as_array().map_or(&[][..], Vec::as_slice);
    g["status"] == "ERR"
        && partitions.iter().any(|p| p["lag"].as_i64() > Some(0))
        && partitions.iter().all(|p| {
            let expected = if p["lag"].as_i64() > Some(0) {
                "STOP"
            } else {
                "OK"
            };
            p["status"] == expected && p["complete"] == 1.0
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_group_is_stop_and_a_healthy_one_ok_ours_or_another_clients() {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let sampled = [
        ("DHANMAN_LAG_INTERVAL_MS", "200"),
        ("DHANMAN_LAG_WINDOW", "3"),
    ];
    let api_proc = setup.spawn_with_env(&["api"], &sampled);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let mut ledger = setup.spawn(&["process", "ledger"]);
    let (_, key) = create_org(&setup, "Linden Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Noor").await;
    let (_, token) = invoice(&api, customer, "100.00").await;
    ledger_applied(&api, &token).await;
    let ledger_group = format!("{}dhanman.ledger", setup.topic_prefix);

    // Another client's group, under a name that is none of ours (no topic prefix): it reads
    // the invoices and commits each one, keeping up.
    let invoices = setup.topic("dhanman.sales.invoices");
    let foreign = format!("billing-export-{}", uuid::Uuid::new_v4().simple());
    let reader: StreamConsumer = dhanman_plumbing::kafka::client_config(&bootstrap())
        .set("group.id", &foreign)
        .set("client.id", "billing-export")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&invoices]).unwrap();
    let reading = tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Ok(m) => {
                    let _ = reader.commit_message(&m, CommitMode::Sync);
                }
                Err(e) => eprintln!("foreign reader: {e}"),
            }
        }
    });

    // Both keep up: judged on a full window, both OK; the foreign one is not ours.
    let report = eventually(
        "both groups judged OK on a full window",
        Duration::from_secs(60),
        || {
            let setup = setup.clone();
            let (ledger_group, foreign) = (ledger_group.clone(), foreign.clone());
            async move {
                let r = judged(&setup).await;
                let ok = |g: Option<Value>| {
                    g.is_some_and(|g| g["status"] == "OK" && g["complete"] == 1.0 && g["lag"] == 0)
                };
                (ok(group_of(&r, &ledger_group)) && ok(group_of(&r, &foreign))).then_some(r)
            }
        },
    )
    .await;
    let theirs = group_of(&report, &foreign).unwrap();
    assert_eq!(theirs["ours"], false, "{theirs}");
    assert_eq!(theirs["offsets_in"], "kafka", "{theirs}");
    assert_eq!(group_of(&report, &ledger_group).unwrap()["ours"], true);

    // The ledger stops and leaves its group; invoices wait for it while the other client's
    // group keeps reading them.
    let stopped_ledger = ledger.stop().await;
    assert!(stopped_ledger.success(), "{}", ledger.log_text());
    for _ in 0..5 {
        invoice(&api, customer, "10.00").await;
    }
    let report = eventually(
        "the ledger judged STOP, the other client's group OK",
        Duration::from_secs(60),
        || {
            let setup = setup.clone();
            let (ledger_group, foreign) = (ledger_group.clone(), foreign.clone());
            async move {
                let r = judged(&setup).await;
                let ours = group_of(&r, &ledger_group)?;
                let theirs = group_of(&r, &foreign)?;
                (stopped(&ours) && theirs["status"] == "OK" && theirs["lag"] == 0).then_some(r)
            }
        },
    )
    .await;
    let ours = group_of(&report, &ledger_group).unwrap();
    assert_eq!(ours["state"], "Empty", "{ours}");
    // The API's sampler judges the same, and says it on `/v1/lag` and in the gauges.
    eventually(
        "GET /v1/lag to judge the ledger STOP",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            let (ledger_group, foreign) = (ledger_group.clone(), foreign.clone());
            async move {
                let r = api.get("/v1/lag").await;
                let ours = group_of(&r.body, &ledger_group)?;
                let theirs = group_of(&r.body, &foreign)?;
                (stopped(&ours) && theirs["status"] == "OK" && theirs["ours"] == false)
                    .then_some(())
            }
        },
    )
    .await;
    let url = format!("{}/metrics", setup.base_url());
    eventually("the status gauges", Duration::from_secs(30), || {
        let (url, ledger_group, foreign) = (url.clone(), ledger_group.clone(), foreign.clone());
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            let stop = format!("group=\"{ledger_group}\",status=\"STOP\"");
            let ok = (metric(&text, "dhanman_lag_group_status", &ledger_group) == 2.0
                && metric(&text, "dhanman_lag_group_status", &foreign) == 0.0
                && text.lines().any(|l| {
                    l.starts_with("dhanman_lag_partitions{")
                        && l.contains(&stop)
                        && !l.ends_with(" 0")
                }))
                && text.contains(&format!("dhanman_lag_group_status{{group=\"{foreign}\"}}"));
            ok.then_some(())
        }
    })
    .await;

    // The other client's consumer goes; records keep coming. Nobody is left in its group,
    // yet it stays reported (measured before) and is judged STOP too.
    reading.abort();
    let _ = reading.await;
    for _ in 0..3 {
        invoice(&api, customer, "10.00").await;
    }
    eventually(
        "the other client's group judged STOP after it left",
        Duration::from_secs(90),
        || {
            let setup = setup.clone();
            let foreign = foreign.clone();
            async move {
                let r = judged(&setup).await;
                let theirs = group_of(&r, &foreign)?;
                (stopped(&theirs) && theirs["ours"] == false).then_some(())
            }
        },
    )
    .await;
    db.drop_db().await;
}
