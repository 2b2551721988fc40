//! The monthly-invoices job against `dhanman up`: two runs at once create each invoice
//! exactly once, a third creates none, one customer's failure is recorded while the others
//! go on, each invoice is issued with its one `SendInvoiceEmail`, the ledger posts the
//! invoices, and `GET /v1/jobs/runs` shows the runs.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::*;

const PERIOD: &str = "2026-12";

pub(crate) struct JobOutput {
    pub(crate) code: Option<i32>,
    pub(crate) summary: Value,
    pub(crate) stderr: String,
}

pub(crate) async fn run_job(setup: &Setup, extra: &[&str]) -> JobOutput {
    let output = Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .args(["jobs", "run", "monthly-invoices"])
        .args(extra)
        .env("DATABASE_URL", &setup.database_url)
        .env("RUST_LOG", "info,sqlx=warn")
        .output()
        .await
        .expect("run dhanman jobs run");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    JobOutput {
        code: output.status.code(),
        summary: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        stderr,
    }
}

async fn customer(api: &Api, body: Value) -> Uuid {
    let r = api.post("/v1/customers", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn balance_becomes(api: &Api, customer: Uuid, expected: &str) {
    eventually(
        &format!("customer {customer}'s balance to be {expected}"),
        Duration::from_secs(60),
        || async move {
            let r = api.get(&format!("/v1/customers/{customer}/balance")).await;
            (r.body["balances"][0]["balance"] == expected).then_some(())
        },
    )
    .await;
}

fn count(summary: &Value, field: &str) -> i64 {
    summary[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_create_each_monthly_invoice_once_and_the_ledger_posts_them() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Lakeview Residency").await;
    let (_, other_key) = create_org(&setup, "Hillside Towers").await;
    let api = Api::new(&setup.base_url(), &key);
    let other = Api::new(&setup.base_url(), &other_key);

    // A monthly charge is validated like any amount, naming the field.
    for bad in [json!("-5"), json!("0"), json!("10.005"), json!("abc")] {
        let r = api
            .post("/v1/customers", json!({"name": "X", "monthly_charge": bad}))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(r.body.to_string().contains("monthly_charge"), "{}", r.body);
    }

    let asha = customer(
        &api,
        json!({"name": "Asha", "unit": "A-101", "monthly_charge": "1500.00"}),
    )
    .await;
    let ravi = customer(&api, json!({"name": "Ravi", "monthly_charge": "2500.50"})).await;
    let meera = customer(&api, json!({"name": "Meera", "unit": "A-102"})).await;
    let kiran = customer(
        &api,
        json!({"name": "Kiran", "unit": "A-103", "monthly_charge": "700.00"}),
    )
    .await;
    sqlx::query("update customers set active = false where id = $1")
        .bind(kiran)
        .execute(&db.pool)
        .await
        .unwrap();
    let dev = customer(
        &other,
        json!({"name": "Dev", "unit": "B-1", "monthly_charge": "999.00"}),
    )
    .await;
    let eligible = 3;

    // Two runs at once: the claims serialize them customer by customer.
    let (first, second) = tokio::join!(
        run_job(&setup, &["--period", PERIOD]),
        run_job(&setup, &["--period", PERIOD])
    );
    for run in [&first, &second] {
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(count(&run.summary, "failed"), 0, "{}", run.summary);
        assert_eq!(run.summary["period"], PERIOD);
        assert_eq!(
            count(&run.summary, "created") + count(&run.summary, "skipped"),
            eligible,
            "{}",
            run.summary
        );
        assert!(run.stderr.contains("job finished"), "{}", run.stderr);
    }
    assert_eq!(
        count(&first.summary, "created") + count(&second.summary, "created"),
        eligible
    );
    assert_eq!(
        count(&first.summary, "skipped") + count(&second.summary, "skipped"),
        eligible
    );
    for (id, n) in [(asha, 1), (ravi, 1), (dev, 1), (meera, 0), (kiran, 0)] {
        let (found,): (i64,) =
            sqlx::query_as("select count(*) from invoices where customer_id = $1 and period = $2")
                .bind(id)
                .bind(PERIOD)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(found, n, "invoices of customer {id}");
    }
    let (number, issue, due, amount): (String, String, String, String) = sqlx::query_as(
        "select invoice_number, issue_date::text, due_date::text, amount::text
           from invoices where customer_id = $1",
    )
    .bind(asha)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            number.as_str(),
            issue.as_str(),
            due.as_str(),
            amount.as_str()
        ),
        ("2026-12-A-101", "2026-12-01", "2026-12-11", "1500.00")
    );
    assert_eq!(
        db.count("select count(*) from outbox where record_name like '%InvoiceCreated' and schema_version = 2")
            .await,
        eligible
    );
    // Each invoice is issued with its email, caused by its InvoiceCreated: one command each.
    assert_eq!(
        db.count(
            "select count(distinct c.payload->>'invoice_id') from outbox c
               join outbox i on i.event_id::text = c.payload->>'causation_id'
                            and i.payload->>'invoice_id' = c.payload->>'invoice_id'
              where c.record_name like '%SendInvoiceEmail' and c.payload->>'template' = 'invoice'
                and i.record_name like '%InvoiceCreated'"
        )
        .await,
        eligible
    );
    assert_eq!(
        db.count("select count(*) from outbox where record_name like '%SendInvoiceEmail'")
            .await,
        eligible
    );

    // The ledger posts them.
    balance_becomes(&api, asha, "1500.00").await;
    balance_becomes(&api, ravi, "2500.50").await;
    balance_becomes(&other, dev, "999.00").await;

    // A third run creates nothing; a customer whose invoice number is taken fails alone.
    let twin = customer(
        &api,
        json!({"name": "Twin", "unit": "A-101", "monthly_charge": "10.00"}),
    )
    .await;
    let third = run_job(&setup, &["--period", PERIOD]).await;
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert_eq!(count(&third.summary, "created"), 0, "{}", third.summary);
    assert_eq!(count(&third.summary, "skipped"), eligible);
    assert_eq!(count(&third.summary, "failed"), 1);
    assert_eq!(
        third.summary["failures"][0]["customer_id"],
        twin.to_string()
    );
    assert!(
        third.summary["failures"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2026-12-A-101")),
        "{}",
        third.summary
    );

    // Runs, newest first, only the caller's organization's.
    let runs = api.get("/v1/jobs/runs").await;
    assert_eq!(runs.status, 200, "{}", runs.body);
    let rows = runs.body["runs"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{}", runs.body);
    assert_eq!(rows[0]["run_id"], third.summary["run_id"]);
    assert_eq!(
        (&rows[0]["created"], &rows[0]["skipped"], &rows[0]["failed"]),
        (&json!(0), &json!(2), &json!(1))
    );
    assert_eq!(rows[0]["failures"][0]["customer_id"], twin.to_string());
    assert_eq!(rows[0]["job"], "monthly-invoices");
    assert!(rows.iter().all(|r| r["finished_at"].is_string()));
    let created: i64 = rows.iter().map(|r| r["created"].as_i64().unwrap()).sum();
    assert_eq!(created, 2, "{}", runs.body);
    let other_runs = other.get("/v1/jobs/runs").await;
    assert_eq!(other_runs.body["runs"].as_array().unwrap().len(), 3);

    // Only failures: exit 1. A manual invoice holds the number; manual invoices with a
    // period stay allowed next to the job's.
    let (lonely, lonely_key) = create_org(&setup, "Riverside").await;
    let lonely_api = Api::new(&setup.base_url(), &lonely_key);
    let zoya = customer(
        &lonely_api,
        json!({"name": "Zoya", "unit": "Z-1", "monthly_charge": "100.00"}),
    )
    .await;
    let manual = lonely_api
        .post(
            "/v1/invoices",
            json!({"customer_id": zoya, "amount": "5.00", "due_date": "2026-12-05",
                   "issue_date": "2026-12-01", "invoice_number": "2026-12-Z-1",
                   "period": PERIOD}),
        )
        .await;
    assert_eq!(manual.status, 201, "{}", manual.body);
    let all_failed = run_job(
        &setup,
        &["--period", PERIOD, "--organization", &lonely.to_string()],
    )
    .await;
    assert_eq!(all_failed.code, Some(1), "{}", all_failed.stderr);
    assert_eq!(count(&all_failed.summary, "failed"), 1);

    // Usage errors exit 2 and name the argument.
    let bad = run_job(&setup, &["--period", "2026-13"]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("--period"), "{}", bad.stderr);
    let _ = org;

    drop(up);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_in_up_bills_the_current_month_once() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);

    let cron = "DHANMAN_MONTHLY_INVOICES_CRON";
    setup
        .refuses_to_start(&["up"], (cron, "every day"), cron)
        .await;

    // Every second: each tick after the first finds the invoice claimed and skips it.
    let up = setup.spawn_with_env(&["up"], &[("DHANMAN_MONTHLY_INVOICES_CRON", "* * * * * *")]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Lakeview Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = customer(&api, json!({"name": "Asha", "monthly_charge": "1200.00"})).await;
    balance_becomes(&api, asha, "1200.00").await;
    db.wait_count(
        "two scheduled runs after the invoice",
        "select count(*) from job_runs where created = 0 and skipped = 1",
        2,
        Duration::from_secs(30),
    )
    .await;
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let (invoices,): (i64,) =
        sqlx::query_as("select count(*) from invoices where customer_id = $1 and period = $2")
            .bind(asha)
            .bind(&period)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(invoices, 1);
    let runs = api.get("/v1/jobs/runs").await;
    assert!(
        runs.body["runs"].as_array().unwrap().len() >= 3,
        "{}",
        runs.body
    );
    // The scheduled runs are counted in the process's metrics: one invoice created, and
    // skips from the later ticks.
    let metrics = reqwest::get(format!("{}/metrics", setup.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |outcome: &str| {
        let prefix = format!(
            "dhanman_job_invoices_total{{job=\"monthly-invoices\",outcome=\"{outcome}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    };
    assert_eq!(counter("created"), 1.0);
    assert!(counter("skipped") >= 2.0);
    assert_eq!(counter("failed"), 0.0);

    drop(up);
    db.drop_db().await;
}
