//! Every `dhanman bench` path, run once at a tiny size through the real binary with
//! `--json`: each prints one object with its fields, its rates positive, its raw limits
//! measured beside them, the books intact (replay changes no balance, the e2e audit is
//! clean, every invoice the api path counts written by a command of its own, the backlog's
//! events accounted for by the audit, the reminders path's timers as its events say). No
//! timing is asserted; this keeps the benchmarks from rotting.

use serde_json::Value;

use crate::helpers::*;

async fn bench(args: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env(
            "DATABASE_URL",
            std::env::var("DATABASE_URL").expect("DATABASE_URL"),
        )
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env_remove("SCHEMA_REGISTRY_URL")
        .output()
        .await
        .expect("run dhanman bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dhanman bench {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object on stdout");
    assert!(report["machine"]["nproc"].as_u64().unwrap() > 0, "{report}");
    report
}

fn positive(report: &Value, fields: &[&str]) {
    for field in fields {
        let v = report[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing: {report}"));
        assert!(v > 0.0 && v.is_finite(), "{field} = {v}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_path_reports_its_rate_beside_raw_consume_and_raw_copy() {
    // No path is the pipeline's, as `make bench` runs it.
    let r = bench(&["--events", "1000", "--baseline-events", "50", "--runs", "1"]).await;
    assert_eq!(r["path"], "pipeline");
    assert_eq!(r["events"], 1000);
    positive(
        &r,
        &[
            "pipeline_per_s",
            "raw_consume_per_s",
            "raw_copy_per_s",
            "seed_pattern_per_s",
            "ratio_to_limit",
            "peak_rss_bytes",
            "cpu_us_per_event",
        ],
    );
    let steal = r["steal_share"].as_f64().expect("steal_share");
    assert!((0.0..=1.0).contains(&steal), "steal_share {steal}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_path_reports_commands_latencies_the_bare_baseline_and_batches_beside_their_copy() {
    // Two runs: the second's commands must be its own (a key of the first used again would be
    // answered from its stored response), which the path checks against the invoices written.
    let r = bench(&[
        "api",
        "--seconds",
        "1",
        "--runs",
        "2",
        "--connections",
        "4",
        "--customers",
        "20",
        "--batch-size",
        "50",
        "--batch-connections",
        "1",
    ])
    .await;
    positive(
        &r,
        &[
            "commands_per_s",
            "p50_ms",
            "p99_ms",
            "baseline_per_s",
            "ratio_to_baseline",
            "batch_invoices_per_s",
            "batch_raw_copy_per_s",
            "batch_ratio_to_limit",
            "peak_rss_bytes",
        ],
    );
    assert!(r["p99_ms"].as_f64() >= r["p50_ms"].as_f64(), "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    // At least the two runs' single invoices and batches, each written once.
    let timed =
        2.0 * (r["commands_per_s"].as_f64().unwrap() + r["batch_invoices_per_s"].as_f64().unwrap());
    assert!(
        r["invoices_written"].as_f64().unwrap() >= timed * 0.5,
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2e_path_holds_a_low_rate_and_leaves_clean_books() {
    let r = bench(&[
        "e2e",
        "--rates",
        "20",
        "--hold-seconds",
        "3",
        "--connections",
        "4",
        "--customers",
        "10",
    ])
    .await;
    assert_eq!(r["sustained_per_s"], 20, "{r}");
    assert_eq!(r["drained"], true, "{r}");
    assert_eq!(r["audit_clean"], true, "{r}");
    assert_eq!(r["steps"][0]["sustained"], true, "{r}");
    positive(&r, &["peak_rss_bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freshness_path_times_each_command_until_its_balance_reflects_it() {
    let r = bench(&[
        "freshness",
        "--rate",
        "20",
        "--seconds",
        "2",
        "--warm-up",
        "1",
        "--connections",
        "4",
        "--customers",
        "10",
    ])
    .await;
    positive(
        &r,
        &[
            "p50_ms",
            "p99_ms",
            "max_ms",
            "read_p50_ms",
            "peak_rss_bytes",
        ],
    );
    assert!(r["max_ms"].as_f64() >= r["p99_ms"].as_f64(), "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["measured"].as_u64().unwrap() >= 30, "{r}");
    // Second 0 began during this test, before now.
    let from = chrono::DateTime::parse_from_rfc3339(r["measured_from"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("measured_from: {e}: {r}"));
    let ago = chrono::Utc::now().signed_duration_since(from);
    assert!(
        ago > chrono::TimeDelta::seconds(2) && ago < chrono::TimeDelta::minutes(5),
        "{r}"
    );
    // By the second: every measured command in one, none slower than the slowest overall.
    let seconds = r["per_second"].as_array().expect("per_second");
    let counted: u64 = seconds
        .iter()
        .map(|s| s["commands"].as_u64().unwrap())
        .sum();
    assert_eq!(Some(counted), r["measured"].as_u64(), "{r}");
    assert!(
        seconds
            .iter()
            .all(|s| s["max_ms"].as_f64() <= r["max_ms"].as_f64()
                && s["p50_ms"].as_f64() <= s["max_ms"].as_f64()),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_path_times_the_api_with_and_without_a_backlog_and_audits_the_books() {
    let r = bench(&[
        "backlog",
        "--rate",
        "20",
        "--seconds",
        "2",
        "--warm-up",
        "1",
        "--events",
        "400",
        "--connections",
        "4",
        "--customers",
        "10",
    ])
    .await;
    assert_eq!(r["path"], "backlog");
    assert_eq!(r["events"], 400);
    positive(
        &r,
        &[
            "idle_p50_ms",
            "idle_p99_ms",
            "p50_ms",
            "p99_ms",
            "p99_ratio",
            "worked_off_s",
            "worked_off_per_s",
            "peak_rss_bytes",
        ],
    );
    assert!(r["p99_ms"].as_f64() >= r["p50_ms"].as_f64(), "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    // The 400 events were behind at least one group when the second phase began: the
    // backlog the phase measures was there.
    assert!(r["max_lag"].as_i64().unwrap() > 0, "{r}");
    assert!(r["slowest_group"].is_string(), "{r}");
    assert_eq!(r["drained"], true, "{r}");
    // The events put behind have their command-side rows: the books account for each.
    assert_eq!(r["audit_clean"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reminders_path_reports_its_rate_beside_raw_consume_and_raw_copy() {
    // 1,001 events: the last invoice has no payment. The path fails unless the timers end
    // as the events say (one per invoice, those paid in full cancelled, every payment noted).
    let r = bench(&["reminders", "--events", "1001", "--runs", "1"]).await;
    assert_eq!(r["path"], "reminders");
    assert_eq!(r["events"], 1001);
    positive(
        &r,
        &[
            "reminders_per_s",
            "raw_consume_per_s",
            "raw_copy_per_s",
            "ratio_to_limit",
            "peak_rss_bytes",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_path_replays_applied_events_without_changing_a_balance() {
    let r = bench(&["replay", "--events", "1000", "--runs", "1"]).await;
    assert_eq!(r["events"], 1000);
    assert_eq!(r["balance_changes"], 0, "{r}");
    assert_eq!(r["applied_again"], 0, "{r}");
    positive(&r, &["replay_per_s", "raw_consume_per_s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_path_reports_rate_and_memory_per_size() {
    let r = bench(&[
        "scaling",
        "--sizes",
        "400,800",
        "--baseline-events",
        "20",
        "--runs",
        "1",
    ])
    .await;
    let sizes = r["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 2, "{r}");
    for (size, events) in sizes.iter().zip([400, 800]) {
        assert_eq!(size["events"], events);
        positive(
            size,
            &["pipeline_per_s", "ratio_to_limit", "peak_rss_bytes"],
        );
    }
}
