//! Consumer lag against running processes: with the ledger stopped, invoices pile up and
//! `dhanman lag`, `GET /v1/lag` and `/metrics` show the lag in records and seconds; with
//! the ledger back, the same tools show it drain to zero.

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
    let accountant = api
        .post(
            "/v1/users",
            serde_json::json!({"email": "acc@maple.example", "name": "Acc", "role": "accountant"}),
        )
        .await;
    let accountant = Api::new(&api.base, accountant.body["api_key"].as_str().unwrap());
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
async fn metrics_text(setup: &Setup) -> String {
    reqwest::get(format!("{}/metrics", setup.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

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
