//! `dhanman rebuild balances` against a running pipeline: balances damaged by hand are
//! found by a dry run (which changes nothing) and restored by `--execute` while the
//! ledger keeps posting; afterwards every balance equals its postings again.

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_are_rebuilt_from_the_postings_while_the_ledger_runs() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Elm Residency").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let mut tokens = Vec::new();
    for amount in ["1200.00", "800.50"] {
        tokens.push(invoice(&api, asha, amount).await.1);
    }
    for token in &tokens {
        let r = api
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let trial = api.get("/v1/trial-balance").await.body;
    let balance = api.get(&format!("/v1/customers/{asha}/balance")).await.body;

    // Damage: revenue and the customer's receivable drift from their postings.
    sqlx::query(
        "update account_balances set credit_total = credit_total + 99 where account_code = '4000'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("update party_balances set debit_total = 1 where party_id = $1")
        .bind(asha)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_ne!(api.get("/v1/trial-balance").await.body, trial);

    let dry = dhanman(&setup, &["rebuild", "balances", "--json"]).await;
    assert!(dry.ok, "{}", dry.stderr);
    let report = dry.json();
    assert_eq!(report["account_differences"], 1, "{report}");
    assert_eq!(report["party_differences"], 1, "{report}");
    assert_eq!(report["executed"], false);
    assert_ne!(
        api.get("/v1/trial-balance").await.body,
        trial,
        "a dry run changed nothing"
    );

    // Executed while invoices keep arriving: the rebuilt balances, plus what the ledger
    // posts after the swap, equal the postings.
    let posting = tokio::spawn({
        let api = api.clone();
        async move {
            let mut tokens = Vec::new();
            for _ in 0..10 {
                tokens.push(invoice(&api, asha, "10.00").await.1);
            }
            tokens
        }
    });
    let run = dhanman(&setup, &["rebuild", "balances", "--execute", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json()["executed"], true);
    for token in posting.await.unwrap() {
        let r = api
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let after = dhanman(&setup, &["rebuild", "balances", "--json"])
        .await
        .json();
    assert_eq!(
        (&after["account_differences"], &after["party_differences"]),
        (&json!(0), &json!(0)),
        "{after}"
    );
    let now = api.get(&format!("/v1/customers/{asha}/balance")).await.body;
    assert_eq!(
        now["balances"][0]["balance"], "2100.50",
        "{now} (before: {balance})"
    );
    let trial = api.get("/v1/trial-balance").await.body;
    assert_eq!(trial["currencies"][0]["balanced"], true, "{trial}");
    drop(up);
    db.drop_db().await;
}
