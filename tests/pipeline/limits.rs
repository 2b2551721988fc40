//! The API's limits per caller, over a real socket and Postgres: a key past its request rate
//! gets 429 with `Retry-After` while other keys go on; every list (users directory, job
//! runs, notification log) comes a page at a time, the pages together exactly the rows, in
//! order, none twice, and a bad `limit` or forged `after` is a 422 naming it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

async fn serve(db: &TestDb, state: impl FnOnce(&mut dhanman_api::AppState)) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut app = dhanman_api::AppState::new(db.pool.clone(), Duration::from_secs(1));
    state(&mut app);
    tokio::spawn(dhanman_api::serve(listener, app));
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_is_told_to_wait_and_other_keys_go_on() {
    let db = TestDb::new().await;
    let base = serve(&db, |s| {
        s.rate_limit = dhanman_api::rate_limit::KeyRateLimit::new(1, 5);
    })
    .await;
    let busy = Api::new(&base, &org_key(&db, "Busy Society").await);
    let quiet = Api::new(&base, &org_key(&db, "Quiet Society").await);

    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(busy.get("/v1/trial-balance").await);
    }
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + limited.len(),
        12,
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // A burst of five, and at most one more as the second ticks over.
    assert!((5..=6).contains(&ok), "{ok} answered");
    for reply in &limited {
        assert_eq!(reply.body["error"], "rate_limited", "{}", reply.body);
        let wait: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 1, "{wait}");
    }
    // The other tenant is untouched, and an unknown key is 401, not counted anywhere.
    assert_eq!(quiet.get("/v1/trial-balance").await.status, 200);
    let stranger = Api::new(&base, "not-a-key");
    assert_eq!(stranger.get("/v1/trial-balance").await.status, 401);
    // Once the bucket refills, the busy key is served again.
    eventually(
        "the busy key's bucket to refill",
        Duration::from_secs(10),
        || async { (busy.get("/v1/trial-balance").await.status == 200).then_some(()) },
    )
    .await;
    db.drop_db().await;
}

/// Reads every page of `path` (which has no query yet) at `limit`, returning the rows under
/// `field`, and checks each page's size and that only the last has no `next`.
async fn all_pages(api: &Api, path: &str, field: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(cursor) => format!("{path}?limit={limit}&after={cursor}"),
            None => format!("{path}?limit={limit}"),
        };
        let page = api.get(&query).await;
        assert_eq!(page.status, 200, "{query}: {}", page.body);
        let got = page.body[field].as_array().unwrap().clone();
        assert!(got.len() <= limit, "{query}: {}", page.body);
        rows.extend(got.iter().cloned());
        match page.body["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    got.len(),
                    limit,
                    "a page before the last is full: {}",
                    page.body
                );
                after = Some(next.to_string());
            }
            None => {
                assert!(page.body["next"].is_null(), "{}", page.body);
                return rows;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_comes_in_pages_that_add_up_to_it() {
    let db = TestDb::new().await;
    let base = serve(&db, |_| {}).await;
    let created = dhanman_producers::orgs::create_organization(&db.pool, "Paged Society", None)
        .await
        .unwrap();
    let org = created.organization_id;
    let api = Api::new(&base, &created.api_key);

    // 23 users with names that sort with ties (the id breaks them), 23 job runs, 23
    // deliveries, several of them at the same instant.
    for i in 0..23 {
        sqlx::query(
            "insert into user_directory (user_id, organization_id, email, name, role, source_event_id)
             values ($1, $2, $3, $4, 'viewer', $1)",
        )
        .bind(Uuid::now_v7())
        .bind(org)
        .bind(format!("u{i}@example.org"))
        .bind(format!("Resident {}", i % 7))
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "insert into job_runs (id, run_id, job, organization_id, started_at)
             values ($1, $1, 'monthly-invoices', $2, now() - make_interval(secs => $3))",
        )
        .bind(Uuid::now_v7())
        .bind(org)
        .bind(f64::from(i / 3))
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "insert into notification_deliveries (event_id, recipient, template, organization_id,
                     correlation_id, event_type, source_topic, message_id, created_at)
             values ($1, $2, 'invoice_created', $3, 'c', 'InvoiceCreated', 'invoices', $4,
                     now() - make_interval(secs => $5))",
        )
        .bind(Uuid::now_v7())
        .bind(format!("r{i}@example.org"))
        .bind(org)
        .bind(format!("<m{i}@example.org>"))
        .bind(f64::from(i / 4))
        .execute(&db.pool)
        .await
        .unwrap();
    }

    for (path, field, key) in [
        ("/v1/users", "users", "user_id"),
        ("/v1/jobs/runs", "runs", "id"),
        ("/v1/notifications", "notifications", "recipient"),
    ] {
        let whole = api.get(&format!("{path}?limit=1000")).await;
        assert_eq!(whole.status, 200, "{path}: {}", whole.body);
        let whole = whole.body[field].as_array().unwrap().clone();
        assert_eq!(whole.len(), 23, "{path}");
        for limit in [1, 5, 23] {
            let paged = all_pages(&api, path, field, limit).await;
            assert_eq!(paged, whole, "{path} in pages of {limit}");
        }
        let distinct: BTreeSet<String> = whole.iter().map(|r| r[key].to_string()).collect();
        assert_eq!(distinct.len(), 23, "{path}: none twice");

        // Without a limit: the default page. Bad limits and cursors name their parameter.
        let first = api.get(path).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert!(first.body["next"].is_null(), "23 rows fit the default page");
        for bad in ["limit=0", "limit=1001", "limit=many"] {
            assert_refused(&api.get(&format!("{path}?{bad}")).await, 422, "limit");
        }
        for bad in [
            "after=%21%21",
            "after=eyJ4IjoxfQ",
            "after=WyJub3QiLCJhIiwia2V5Il0",
        ] {
            assert_refused(&api.get(&format!("{path}?{bad}")).await, 422, "after");
        }
    }
    // The directory's order is by name, then id.
    let users = all_pages(&api, "/v1/users", "users", 4).await;
    let keys: Vec<(String, String)> = users
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_string(),
                u["user_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    db.drop_db().await;
}
