//! After an invoice, a payment through `dhanman gateway` and an undecodable record,
//! `/metrics` of `dhanman up` names every metric of the table in [metrics](docs/metrics.md)
//! (route templates, not raw paths, as labels; the poison record counted by class and in
//! `dhanman_dlq_size`; both of its Postgres pools, each as large as `DHANMAN_DB_POOL`); a
//! `traceparent` sent with a command reaches the outbox row, the
//! Kafka headers of the event and of the ledger's `LedgerEntryPosted` (same trace, new
//! span), a malformed one is replaced; `dhanman relay` and `dhanman process ledger` serve
//! `/healthz` and `/metrics` on `DHANMAN_METRICS_ADDR`; SIGTERM stops `dhanman up` with
//! exit 0, every processor out of its group (the broker describes each group without
//! members)

use std::time::Duration;

use dhanman_schemas::topics;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::payments::{Gateway, pay, spawn_up, up_env};

/// Every metric the pipeline exports (the table in docs/metrics.md). The Grafana dashboard may name
/// only these (`compose.rs`).
pub const EXPORTED: &[&str] = &[
    // processors/src/runtime.rs
    "dhanman_processor_batch_duration_seconds",
    "dhanman_processor_events_total",
    "dhanman_processor_failures_total",
    "dhanman_processor_retries_total",
    "dhanman_dlq_records_total",
    // connectors/src/relay.rs, connectors/src/gauges.rs
    "dhanman_events_published_total",
    "dhanman_outbox_depth",
    "dhanman_outbox_parked",
    "dhanman_outbox_oldest_age_seconds",
    "dhanman_dlq_size",
    "dhanman_sampler_active",
    // api/src/middleware.rs
    "dhanman_http_requests_total",
    "dhanman_http_request_duration_seconds",
    // producers/src/invoice_group.rs
    "dhanman_invoice_writer_invoices_total",
    "dhanman_invoice_writer_statements_total",
    // payments/src/lib.rs
    "dhanman_gateway_breaker_state",
    "dhanman_gateway_requests_total",
    "dhanman_gateway_retries_total",
    "dhanman_gateway_request_duration_seconds",
    "dhanman_payment_sagas_total",
    // connectors/src/lag/exposition.rs
    "dhanman_lag_group_status",
    "dhanman_lag_partitions",
    "dhanman_lag_groups_left_out",
    "kafka_consumergroup_group_lag",
    "kafka_consumergroup_group_lag_seconds",
    "kafka_consumergroup_group_max_lag",
    "kafka_consumergroup_group_max_lag_seconds",
    "kafka_consumergroup_group_sum_lag",
    "kafka_consumergroup_group_offset",
    "kafka_partition_latest_offset",
    // api/src/consistency.rs
    "dhanman_consistency_waits_total",
    "dhanman_consistency_wait_duration_seconds",
    "dhanman_consistency_first_looks_total",
    "dhanman_consistency_waiting",
    "dhanman_consistency_listening",
    // src/telemetry.rs
    "dhanman_db_connections",
    "dhanman_db_pool_size",
];

async fn scrape(url: &str) -> Option<String> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// Names of the series in an exposition text (histograms by their base name).
fn names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the last scrape still lacked, printed if the test fails waiting for it.
#[derive(Default)]
struct Missing(std::sync::Mutex<Vec<String>>);

impl Drop for Missing {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "still missing at the last scrape: {:?}",
                self.0.lock().unwrap()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_up_name_every_exported_metric_after_a_little_traffic() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let gateway = Gateway::start(&setup).await;
    let mut env = up_env(&gateway);
    env.push(("DHANMAN_LAG_INTERVAL_MS", "200".into()));
    env.push(("DHANMAN_DB_POOL", "7".into()));
    let up = spawn_up(&setup, &env);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Metrics Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;
    let (invoice_id, token) = invoice(&api, customer, "100.00").await;
    let r = api
        .get(&format!("/v1/trial-balance?consistent_with={token}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let paid = pay(&api, "metrics-1", &invoice_id, "upi").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    // A record no processor can decode: dead-lettered by the ledger (and the others).
    let invoices = setup.topic(topics::INVOICES);
    produce(&producer(), &invoices, "poison", b"not an avro record").await;

    let url = format!("{}/metrics", setup.base_url());
    let dlq = setup.topic(&topics::dlq(topics::INVOICES));
    let missing = Missing::default();
    let text = eventually(
        "every metric on /metrics, and the poison record in the DLQ",
        // The lag gauges wait for a sample of every group on the cluster: on a busy
        // machine running the whole suite, that can take a while.
        Duration::from_secs(120),
        || {
            let (url, dlq, missing) = (url.clone(), dlq.clone(), &missing);
            async move {
                let text = scrape(&url).await?;
                let present = names(&text);
                let topic = format!("topic=\"{dlq}\"");
                // Every processor reading the topic dead-letters the record on its own
                // time: wait for the ledger's.
                let ledger_letter = [r#"processor="ledger""#, r#"class="undecodable""#, &topic];
                let mut absent: Vec<String> = EXPORTED
                    .iter()
                    .filter(|m| !present.contains(**m))
                    .map(|m| m.to_string())
                    .collect();
                if sum(&text, "dhanman_dlq_size", &[&topic]) < 1.0 {
                    absent.push(format!("dhanman_dlq_size of {dlq}"));
                }
                if sum(&text, "dhanman_dlq_records_total", &ledger_letter) < 1.0 {
                    absent.push("the ledger's dead letter".into());
                }
                let complete = absent.is_empty();
                *missing.0.lock().unwrap() = absent;
                complete.then_some(text)
            }
        },
    )
    .await;

    let ledger = "processor=\"ledger\"";
    assert!(
        sum(
            &text,
            "dhanman_processor_events_total",
            &[ledger, "outcome=\"applied\""]
        ) >= 2.0
    );
    assert!(
        sum(
            &text,
            "dhanman_dlq_records_total",
            &[ledger, "class=\"undecodable\"", &format!("topic=\"{dlq}\"")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "dhanman_processor_failures_total",
            &[ledger, "class=\"poison\""]
        ) >= 1.0
    );
    assert!(
        sum(
            &text,
            "dhanman_processor_batch_duration_seconds_count",
            &[ledger]
        ) >= 1.0
    );
    assert!(
        sum(
            &text,
            "dhanman_events_published_total",
            &[&format!("topic=\"{invoices}\"")]
        ) >= 1.0
    );
    // Route templates, not raw paths: the invoice id is not a label value.
    assert!(
        sum(
            &text,
            "dhanman_http_requests_total",
            &[
                "route=\"/v1/invoices\"",
                "method=\"POST\"",
                "status=\"201\""
            ]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        !text.contains(&invoice_id),
        "a raw path leaked into a label"
    );
    assert!(sum(&text, "dhanman_gateway_requests_total", &["op=\"charge\""]) >= 1.0);
    // The trial balance read with a token: one wait of the ledger's, answered, its first
    // look counted once, wherever it was taken; no query waits now; the listener hears.
    let answered = ["applied", "woken", "looked"].map(|o| {
        sum(
            &text,
            "dhanman_consistency_waits_total",
            &[ledger, &format!("outcome=\"{o}\"")],
        )
    });
    assert_eq!(answered.iter().sum::<f64>(), 1.0, "{text}");
    assert_eq!(
        sum(&text, "dhanman_consistency_first_looks_total", &[ledger]),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "dhanman_consistency_wait_duration_seconds_count",
            &[ledger]
        ),
        1.0
    );
    assert_eq!(sum(&text, "dhanman_consistency_waiting", &[]), 0.0);
    assert_eq!(sum(&text, "dhanman_consistency_listening", &[]), 1.0);
    // Both of `dhanman up`'s pools, each as large as `DHANMAN_DB_POOL`; the API's has
    // sessions open after the requests above.
    for pool in ["api", "work"] {
        let pool = format!("pool=\"{pool}\"");
        assert_eq!(sum(&text, "dhanman_db_pool_size", &[&pool]), 7.0, "{text}");
    }
    assert!(
        sum(&text, "dhanman_db_connections", &["pool=\"api\""]) >= 1.0,
        "{text}"
    );

    // SIGTERM: every processor leaves its group (the coordinator empties it at once, not
    // after the session timeout); exit 0.
    let mut up = up;
    let status = up.stop().await;
    let log = up.log_text();
    assert!(status.success(), "{status}: {log}");
    assert_eq!(
        log.matches("left the consumer group").count(),
        dhanman::PROCESSORS.len(),
        "{log}"
    );
    for name in dhanman::PROCESSORS {
        let group = format!("{}dhanman.{name}", setup.topic_prefix);
        let described = describe_group(&group).await;
        assert!(described.members.is_empty(), "{described:?}");
    }
    db.drop_db().await;
}

/// A request's trace id on the outbox row of an event, and its span id.
async fn outbox_trace(pool: sqlx::PgPool, sql: String) -> Option<(String, String)> {
    let headers: Option<(Value,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_optional(&pool)
        .await
        .ok()?;
    let tp = headers?.0.get("traceparent")?.as_str()?.to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    Some((parts[1].to_string(), parts[2].to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_flows_from_the_request_to_the_events_a_processor_emits() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let api_proc = setup.spawn(&["api"]);
    setup.wait_ready(&api_proc).await;
    let (relay_port, ledger_port) = (free_port(), free_port());
    let relay_addr = format!("127.0.0.1:{relay_port}");
    let ledger_addr = format!("127.0.0.1:{ledger_port}");
    let _relay = setup.spawn_with_env(&["relay"], &[("DHANMAN_METRICS_ADDR", &relay_addr)]);
    let _ledger = setup.spawn_with_env(
        &["process", "ledger"],
        &[("DHANMAN_METRICS_ADDR", &ledger_addr)],
    );
    let (_, key) = create_org(&setup, "Trace Towers").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Asha").await;

    // A well-formed traceparent is continued: same trace, a new span of the API's own.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let r = api
        .send(
            api.http
                .post(format!("{}/v1/invoices", api.base))
                .header("traceparent", &incoming)
                .json(&json!({"customer_id": customer, "amount": "10.00",
                              "due_date": due_date(), "issue_date": "2026-12-01"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let answered = r.headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    assert_ne!(answered, incoming);
    let event_id = r.body["consistency_token"].as_str().unwrap().to_string();
    let (t, api_span) = outbox_trace(
        db.pool.clone(),
        format!("select headers from outbox where event_id = '{event_id}'"),
    )
    .await
    .expect("the invoice's outbox row carries a traceparent");
    assert_eq!(t, trace_id);
    assert!(answered.contains(&api_span));

    // The ledger's announcement of the posting: same trace, a child span of its own.
    let (t, ledger_span) = eventually(
        "the ledger's LedgerEntryPosted in the outbox",
        Duration::from_secs(60),
        || {
            outbox_trace(
                db.pool.clone(),
                format!(
                    "select o.headers from outbox o join journal_entries j on j.id = o.derived_from
                      where j.source_event_id = '{event_id}'"
                ),
            )
        },
    )
    .await;
    assert_eq!(t, trace_id);
    assert_ne!(ledger_span, api_span);

    // On Kafka: the invoice and the announcement carry it in their headers.
    let read = read_topic(&setup.topic(topics::INVOICES), 1).await;
    assert_eq!(
        read[0].header("traceparent"),
        Some(format!("00-{trace_id}-{api_span}-01").as_str())
    );
    let read = read_topic(&setup.topic(topics::LEDGER_ENTRIES), 1).await;
    assert_eq!(
        read[0].header("traceparent"),
        Some(format!("00-{trace_id}-{ledger_span}-01").as_str())
    );

    // A malformed traceparent is replaced by a new trace, not refused.
    let r = api
        .send(
            api.http
                .post(format!("{}/v1/customers", api.base))
                .header("traceparent", "00-not-a-trace-01")
                .json(&json!({"name": "Ravi", "email": "r@example.org"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let answered = r.headers["traceparent"].to_str().unwrap();
    assert_eq!(answered.len(), 55, "{answered}");
    assert!(!answered.contains(trace_id));

    // The relay and the processor, run alone, serve /healthz and /metrics, their one pool
    // named `work`.
    for (addr, series) in [
        (&relay_addr, "dhanman_events_published_total"),
        (&ledger_addr, "dhanman_processor_batch_duration_seconds"),
        (&relay_addr, "dhanman_db_pool_size{pool=\"work\"}"),
        (&ledger_addr, "dhanman_db_connections{pool=\"work\""),
    ] {
        let health = scrape(&format!("http://{addr}/healthz")).await;
        assert_eq!(health.as_deref(), Some("ok"));
        let url = format!("http://{addr}/metrics");
        eventually(
            &format!("{series} on {url}"),
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let text = scrape(&url).await?;
                    text.lines().any(|l| l.starts_with(series)).then_some(())
                }
            },
        )
        .await;
    }
    db.drop_db().await;
}
