//! Corrections by replay: a month of invoices, a payment and a void posted under the
//! shipped rules, then the revenue account moved (`DHANMAN_LEDGER_ACCOUNTS=revenue=4100`).
//! `dhanman replay --processor ledger --correct` dry-runs the difference per account (and
//! none per party: the receivable does not move) without writing; `--execute` posts one
//! reversal and one corrected entry per invoice and void, linked to the entry they replace,
//! leaving the old revenue account at zero, every customer's balance as it was and the
//! auditor clean; a second run posts nothing; the payments, whose rule did not change, are
//! left alone. Rules naming an account the chart lacks, and `--correct` on a processor
//! that posts nothing, are refused.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::*;

const MOVED: &[(&str, &str)] = &[("DHANMAN_LEDGER_ACCOUNTS", "revenue=4100")];

async fn correct(setup: &Setup, topic: &str, extra: &[&str], env: &[(&str, &str)]) -> CliRun {
    let mut args = vec![
        "replay",
        "--processor",
        "ledger",
        "--topic",
        topic,
        "--from",
        "beginning",
        "--correct",
        "--json",
    ];
    args.extend_from_slice(extra);
    dhanman_with_env(setup, &args, env).await
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
}

/// (debit total, credit total) of an account, through the API.
async fn account(api: &Api, code: &str) -> (Decimal, Decimal) {
    let r = api.get(&format!("/v1/accounts/{code}/balance")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    match r.body["balances"].as_array().and_then(|b| b.first()) {
        Some(b) => (dec(&b["debit_total"]), dec(&b["credit_total"])),
        None => (Decimal::ZERO, Decimal::ZERO),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_revenue_account_corrects_a_month_by_reversal_once() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (org, key) = create_org(&setup, "Cedar Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let bela = api.customer("Bela").await;
    let mut tokens = Vec::new();
    let mut invoices = Vec::new();
    for (customer, amount) in [(asha, "1500.00"), (asha, "250.50"), (bela, "999.99")] {
        let (id, token) = invoice(&api, customer, amount).await;
        invoices.push(id);
        tokens.push(token);
    }
    let paid = api
        .post(
            "/v1/payments/manual",
            json!({"invoice_id": invoices[0], "amount": "1500.00"}),
        )
        .await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    tokens.push(paid.body["consistency_token"].as_str().unwrap().into());
    let voided = api
        .post(&format!("/v1/invoices/{}/void", invoices[2]), json!({}))
        .await;
    assert_eq!(voided.status, 200, "{}", voided.body);
    tokens.push(voided.body["consistency_token"].as_str().unwrap().into());
    for token in &tokens {
        ledger_applied(&api, token).await;
    }
    // What each customer owes (their receivable's debits and credits both grow by the
    // reversal and the corrected entry; the difference must not move).
    let balance = |c: uuid::Uuid| {
        let api = api.clone();
        async move {
            let r = api.get(&format!("/v1/customers/{c}/balance")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body["balances"][0]["balance"].clone()
        }
    };
    let (asha_before, bela_before) = (balance(asha).await, balance(bela).await);
    let revenue_before = account(&api, "4000").await;
    // Invoiced 2750.49, of which 999.99 voided: 1750.50 of revenue.
    assert_eq!(
        revenue_before,
        ("999.99".parse().unwrap(), "2750.49".parse().unwrap())
    );
    let entries = db.count("select count(*) from journal_entries").await;
    let topic = setup.topic("dhanman.sales.invoices");

    // Rules naming an account the chart lacks are refused before anything is read.
    let unknown = correct(
        &setup,
        &topic,
        &[],
        &[("DHANMAN_LEDGER_ACCOUNTS", "revenue=4100")],
    )
    .await;
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("the chart lacks: 4100"),
        "{}",
        unknown.stderr
    );
    let users = dhanman(
        &setup,
        &[
            "replay",
            "--processor",
            "users",
            "--topic",
            &setup.topic("dhanman.common.users"),
            "--from",
            "beginning",
            "--correct",
        ],
    )
    .await;
    assert!(!users.ok);
    assert!(users.stderr.contains("posts none"), "{}", users.stderr);

    // The chart gains the account; the dry run says what moves and writes nothing.
    sqlx::query(
        "insert into accounts (code, name, type) values ('4100', 'Maintenance Revenue (sinking fund)', 'revenue')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dry = correct(&setup, &topic, &[], MOVED).await;
    assert!(dry.ok, "{}", dry.stderr);
    let s = dry.json();
    assert_eq!(
        (
            &s["executed"],
            &s["records"],
            &s["corrected"],
            &s["unchanged"]
        ),
        (&json!(false), &json!(4), &json!(4), &json!(0)),
        "{s}"
    );
    let moves: Vec<(String, String, Decimal)> = s["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["organization_id"].as_str().unwrap().to_string(),
                a["account_code"].as_str().unwrap().to_string(),
                dec(&a["net_debit"]),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (org.to_string(), "4000".into(), "1750.50".parse().unwrap()),
            (org.to_string(), "4100".into(), "-1750.50".parse().unwrap()),
        ],
        "{s}"
    );
    assert_eq!(s["parties"], json!([]), "{s}");
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries
    );

    // Executed: a reversal and a corrected entry per invoice and void.
    let run = correct(&setup, &topic, &["--execute"], MOVED).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json()["corrected"], 4, "{}", run.stdout);
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries + 8
    );
    let links = db
        .count(
            "select count(*) from journal_entries r
               join journal_entries c on c.reference_id = r.reference_id
                                     and c.reference_type = 'correction'
               join journal_entries o on o.id = r.reference_id
              where r.reference_type = 'reversal'
                and r.source_event_id = o.source_event_id
                and c.source_event_id = o.source_event_id",
        )
        .await;
    assert_eq!(links, 4);
    let revenue_after = account(&api, "4000").await;
    assert_eq!(
        revenue_after.0 - revenue_after.1,
        Decimal::ZERO,
        "{revenue_after:?}"
    );
    let moved = account(&api, "4100").await;
    assert_eq!(moved.1 - moved.0, "1750.50".parse::<Decimal>().unwrap());
    assert_eq!(balance(asha).await, asha_before);
    assert_eq!(balance(bela).await, bela_before);
    let audit = dhanman(&setup, &["audit", "--json"]).await;
    assert!(audit.ok, "{}\n{}", audit.stdout, audit.stderr);
    assert_eq!(audit.json()["violations"], json!([]), "{}", audit.stdout);

    // Again: nothing left to correct, nothing posted.
    let again = correct(&setup, &topic, &["--execute"], MOVED).await;
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(
        (&again.json()["corrected"], &again.json()["unchanged"]),
        (&json!(0), &json!(4)),
        "{}",
        again.stdout
    );
    assert_eq!(
        db.count("select count(*) from journal_entries").await,
        entries + 8
    );
    // The payment's rule did not change.
    let payments = correct(
        &setup,
        &setup.topic("dhanman.sales.payments"),
        &["--execute"],
        MOVED,
    )
    .await;
    assert!(payments.ok, "{}", payments.stderr);
    assert_eq!(
        (&payments.json()["corrected"], &payments.json()["unchanged"]),
        (&json!(0), &json!(1)),
        "{}",
        payments.stdout
    );
    drop(up);
    db.drop_db().await;
}
