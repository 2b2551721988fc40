//! Balances damaged by hand (revenue, a customer's receivable) are found by a dry run,
//! which changes nothing; `--execute` while ten invoices are being posted restores them;
//! afterwards a dry run finds no difference, the customer owes exactly the invoices and the
//! trial balance balances. The users projection damaged by hand (a row lost, a name
//! changed): the dry run counts the differences and drops its shadow; `--execute` restores
//! every row; the live processor then writes into the rebuilt table. A rebuild that
//! starts while a ledger batch has written its party rows and not yet its account rows
//! waits for the batch instead of deadlocking with it.

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

async fn directory(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("select email, name from user_directory order by email")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_projection_is_rebuilt_from_its_topic_into_a_shadow_and_swapped_in() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let up = setup.spawn(&["up"]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "Fig Towers").await;
    let api = Api::new(&setup.base_url(), &key);
    let mut tokens = Vec::new();
    for (email, role) in [("m@fig.example", "manager"), ("c@fig.example", "cfo")] {
        let r = api
            .post(
                "/v1/users",
                json!({"email": email, "name": email, "role": role}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.push(r.body["consistency_token"].as_str().unwrap().to_string());
    }
    // Users are keyed by id, so each may sit on its own partition: every token is waited for.
    for token in &tokens {
        let r = api.get(&format!("/v1/users?consistent_with={token}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The administrator's `UserCreated` (from `orgs create`) has no token to wait on.
    db.wait_count(
        "the administrator in the projection",
        "select count(*) from user_directory",
        3,
        std::time::Duration::from_secs(30),
    )
    .await;
    let healthy = directory(&db).await;

    // Damage: one user lost, one renamed.
    sqlx::query("delete from user_directory where email = 'm@fig.example'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update user_directory set name = 'wrong' where email = 'c@fig.example'")
        .execute(&db.pool)
        .await
        .unwrap();
    let dry = dhanman(&setup, &["rebuild", "users", "--json"]).await;
    assert!(dry.ok, "{}", dry.stderr);
    let report = dry.json();
    assert_eq!(
        report["tables"]["user_directory"],
        json!([2, 3, 3]),
        "{report}"
    );
    assert_eq!(db.count("select count(*) from user_directory").await, 2);
    assert_eq!(
        db.count("select count(*) from pg_namespace where nspname = 'dhanman_shadow'")
            .await,
        0,
        "the shadow is dropped after a dry run"
    );

    let run = dhanman(&setup, &["rebuild", "users", "--execute", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(directory(&db).await, healthy);
    // The live processor carries on into the rebuilt table.
    let r = api
        .post(
            "/v1/users",
            json!({"email": "a@fig.example", "name": "A", "role": "approver"}),
        )
        .await;
    let token = r.body["consistency_token"].as_str().unwrap().to_string();
    let r = api.get(&format!("/v1/users?consistent_with={token}")).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 4, "{}", r.body);
    let after = dhanman(&setup, &["rebuild", "users", "--json"])
        .await
        .json();
    assert_eq!(
        after["tables"]["user_directory"],
        json!([4, 4, 0]),
        "{after}"
    );
    drop(up);
    db.drop_db().await;
}

/// A ledger batch writes its party balances, then its account balances, in one
/// transaction; a rebuild starting between the two waits for the batch and then succeeds
/// (it locks the tables in the same order), and the batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_between_a_batchs_party_and_account_rows_waits_for_it() {
    let db = TestDb::new().await;
    let org = uuid::Uuid::now_v7();
    let mut batch = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into party_balances (organization_id, account_code, party_type, party_id,
                                     currency, debit_total, credit_total)
         values ($1, '1200', 'customer', $2, 'INR', 10, 0)",
    )
    .bind(org)
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *batch)
    .await
    .unwrap();
    let pool = db.pool.clone();
    let rebuild =
        tokio::spawn(async move { dhanman_processors::balances::rebuild(&pool, true).await });
    eventually(
        "the rebuild to wait for the batch's lock",
        std::time::Duration::from_secs(30),
        || async {
            (db.count(
                "select count(*) from pg_locks l join pg_class c on c.oid = l.relation
                  where not l.granted and c.relname in ('party_balances', 'account_balances')",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;
    sqlx::query(
        "insert into account_balances (organization_id, account_code, currency, debit_total,
                                       credit_total)
         values ($1, '1200', 'INR', 10, 0)",
    )
    .bind(org)
    .execute(&mut *batch)
    .await
    .expect("the batch's account rows, with a rebuild waiting");
    batch.commit().await.unwrap();
    let report = rebuild.await.unwrap().expect("the rebuild after the batch");
    assert!(report.executed);
    db.drop_db().await;
}
