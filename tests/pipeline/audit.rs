//! The ledger auditor against `dhanman up` over real sockets: after invoices, a manual
//! payment and a void have gone through the API and the ledger, `dhanman audit` finds the
//! books clean (exit 0, no violations) and `up`'s own periodic audit exports
//! `dhanman_ledger_audit_violations` 0 for every kind. A balance row corrupted with SQL is
//! named as `balance_mismatch` (with the trial balance it breaks): exit 1, the gauge 1 for
//! the kind, the count in `/readyz` (still ready), the violation logged once however many
//! audits find it. An invoice whose amount is changed on the command side behind the
//! ledger's back is named as `receivable_mismatch` for its customer. A database it cannot
//! reach is exit 2.

use std::collections::BTreeMap;
use std::time::Duration;

use dhanman_processors::audit::{KINDS, METRIC};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// What `dhanman audit --json` did: its exit code, the report, its stderr.
struct Audit {
    code: Option<i32>,
    report: Value,
    stderr: String,
}

impl Audit {
    /// (kind, subject) of each violation, sorted.
    fn named(&self) -> Vec<(String, String)> {
        let mut named: Vec<(String, String)> = self.report["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("no violations array: {}", self.report))
            .iter()
            .map(|v| {
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["subject"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        named.sort();
        named
    }

    fn violation(&self, kind: &str) -> &Value {
        self.report["violations"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["kind"] == kind))
            .unwrap_or_else(|| panic!("no {kind} in {}", self.report))
    }
}

/// Runs `dhanman audit --json` against `database_url` (the exit code is the point, which
/// [`dhanman`] does not give).
async fn audit(database_url: &str) -> Audit {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .args(["audit", "--json"])
        .env("DATABASE_URL", database_url)
        .output()
        .await
        .expect("run dhanman audit");
    Audit {
        code: output.status.code(),
        report: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The auditor's gauge per kind, as `/metrics` of `up` shows it.
async fn gauges(setup: &Setup) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("{}/metrics", setup.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let prefix = format!("{METRIC}{{kind=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (kind, value) = rest.split_once("\"} ")?;
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until every kind's gauge is `expected` (0 for a kind not named).
async fn wait_gauges(setup: &Setup, expected: &[(&str, f64)]) {
    let want: BTreeMap<String, f64> = KINDS
        .iter()
        .map(|kind| {
            let n = expected
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0.0, |(_, n)| *n);
            (kind.to_string(), n)
        })
        .collect();
    eventually(
        &format!("{METRIC} to be {want:?}"),
        Duration::from_secs(30),
        || {
            let (setup, want) = (setup.clone(), want.clone());
            async move { (gauges(&setup).await == want).then_some(()) }
        },
    )
    .await;
}

/// `/readyz` once its audit line counts `violations`; it stays 200 and ready throughout.
async fn wait_readyz(setup: &Setup, violations: u64) -> Value {
    let url = format!("{}/readyz", setup.base_url());
    eventually(
        &format!("/readyz to count {violations} violations"),
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                assert_eq!(r.status(), 200, "readiness does not fail on violations");
                let body: Value = r.json().await.ok()?;
                assert_eq!(body["status"], "ready", "{body}");
                (body["ledger_audit"]["violations"] == violations).then_some(body)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_finds_clean_books_clean_and_names_each_corruption() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn_with_env(&["up"], &[("DHANMAN_AUDIT_INTERVAL_MS", "500")]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Audit Heights").await;
    let api = Api::new(&setup.base_url(), &key);

    // Asha: an invoice part paid by hand, and one voided; Ravi: one left open.
    let asha = api.customer("Asha").await;
    let ravi = api.customer("Ravi").await;
    let (paid_in_part, t1) = invoice(&api, asha, "1500.50").await;
    let (to_void, t2) = invoice(&api, asha, "600.00").await;
    let (ravis, t3) = invoice(&api, ravi, "2500.00").await;
    let payment = api
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": paid_in_part, "amount": "1000.25", "method": "cash"}),
        )
        .await;
    assert_eq!(payment.status, 201, "{}", payment.body);
    let voided = api
        .post(
            &format!("/v1/invoices/{to_void}/void"),
            json!({"reason": "raised twice"}),
        )
        .await;
    assert_eq!(voided.status, 200, "{}", voided.body);
    let t4 = payment.body["consistency_token"].as_str().unwrap();
    let t5 = voided.body["consistency_token"].as_str().unwrap();
    for token in [t1.as_str(), &t2, &t3, t4, t5] {
        ledger_applied(&api, token).await;
    }

    // Clean: exit 0, no violations, every kind's gauge 0.
    let clean = dhanman(&setup, &["audit", "--json"]).await;
    assert!(clean.ok, "{}\n{}", clean.stdout, clean.stderr);
    assert_eq!(clean.json()["violations"], json!([]), "{}", clean.stdout);
    assert!(clean.json()["checked_at"].is_string(), "{}", clean.stdout);
    assert!(clean.stderr.contains("audit: clean"), "{}", clean.stderr);
    wait_gauges(&setup, &[]).await;
    let ready = wait_readyz(&setup, 0).await;
    assert!(ready["ledger_audit"]["checked_at"].is_string(), "{ready}");

    // A balance row corrupted (balances are not immutable; postings are): the bank account
    // no longer equals its postings, and the trial balance no longer nets to zero.
    let corrupted = sqlx::query(
        "update account_balances set debit_total = debit_total + 1
          where organization_id = $1 and account_code = '1000'",
    )
    .bind(org)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(corrupted.rows_affected(), 1);
    let found = audit(&setup.database_url).await;
    assert_eq!(found.code, Some(1), "{}\n{}", found.report, found.stderr);
    assert_eq!(
        found.named(),
        [
            (
                "balance_mismatch".to_string(),
                "account_balances account 1000 INR".to_string()
            ),
            ("trial_balance".to_string(), "INR".to_string()),
        ],
        "{}",
        found.report
    );
    let mismatch = found.violation("balance_mismatch");
    assert_eq!(mismatch["organization_id"], org.to_string());
    assert_eq!(
        mismatch["detail"],
        "postings sum to debit 1000.25, credit 0.00; the row has debit 1001.25, credit 0.00"
    );
    assert!(
        found
            .stderr
            .contains("audit: 2 violations (trial_balance 1, balance_mismatch 1)"),
        "{}",
        found.stderr
    );
    wait_gauges(&setup, &[("balance_mismatch", 1.0), ("trial_balance", 1.0)]).await;
    let ready = wait_readyz(&setup, 2).await;
    assert_eq!(
        ready["ledger_audit"]["by_kind"],
        json!({"balance_mismatch": 1, "trial_balance": 1}),
        "{ready}"
    );

    // The command side changed behind the ledger's back: Ravi's invoice now says more than
    // the books hold for him.
    sqlx::query("update invoices set amount = amount + 0.01 where id = $1")
        .bind(ravis.parse::<Uuid>().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    let found = audit(&setup.database_url).await;
    assert_eq!(found.code, Some(1), "{}\n{}", found.report, found.stderr);
    assert_eq!(found.named().len(), 3, "{}", found.report);
    let receivable = found.violation("receivable_mismatch");
    assert_eq!(receivable["subject"], ravi.to_string(), "{receivable}");
    assert_eq!(receivable["organization_id"], org.to_string());
    assert_eq!(
        receivable["detail"],
        "INR: command side invoiced 2500.01 - paid 0.00 - voided 0.00 = 2500.01; \
         books (account 1200, party customer) 2500.00"
    );
    assert!(
        found.stderr.contains(
            "audit: 3 violations (trial_balance 1, balance_mismatch 1, receivable_mismatch 1)"
        ),
        "{}",
        found.stderr
    );
    wait_gauges(
        &setup,
        &[
            ("balance_mismatch", 1.0),
            ("trial_balance", 1.0),
            ("receivable_mismatch", 1.0),
        ],
    )
    .await;
    wait_readyz(&setup, 3).await;
    // Asha's receivable (invoiced, part paid, voided) still agrees.
    assert!(
        !found.named().iter().any(|(_, s)| *s == asha.to_string()),
        "{}",
        found.report
    );

    // `up` audited every 500 ms all along, and logged each violation once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = up.log_text();
    for (kind, subject) in [
        (
            "balance_mismatch",
            "account_balances account 1000 INR".to_string(),
        ),
        ("receivable_mismatch", ravi.to_string()),
    ] {
        let logged = log
            .lines()
            .filter(|l| l.contains("ledger audit violation"))
            .filter(|l| l.contains(kind) && l.contains(&subject))
            .count();
        assert_eq!(logged, 1, "{kind} {subject} logged {logged} times:\n{log}");
    }

    // No database to audit: exit 2.
    let unreachable = audit("postgres://postgres@127.0.0.1:1/nothing").await;
    assert_eq!(unreachable.code, Some(2), "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("error:"),
        "{}",
        unreachable.stderr
    );

    drop(up);
    db.drop_db().await;
}
