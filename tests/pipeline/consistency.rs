//! Consistency waits in the API: a query given a token waits until the processor's batch
//! that applies it commits, and is answered by the one look that batch's notification
//! causes for every token waiting on that processor (not by a look of its own), with
//! another processor's batch heard before it; a wait that ends, answered or expired, leaves
//! no token behind. A customer's balance takes its first look in the same round trip as the
//! customer (applied already: no wait at all). A batch's notification naming its events
//! wakes their waiters without a look, and a token made since the listener began takes its
//! first look in the events heard named (not one made before a lost connection's return). A look is planned once per connection, not at every
//! call. The API runs in-process on a real socket against a real Postgres; the batch is
//! a gate row and its `NOTIFY`, committed together as a processor commits them.

use std::time::Duration;

use uuid::Uuid;

use crate::helpers::*;

/// What a processor's batch commits for consistency: its gate row and its notification.
async fn commit_batch(db: &TestDb, processor: &str, event_id: Uuid) {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into processed_events (processor, event_id, topic, partition, \"offset\")
         values ($1, $2, 'dhanman.invoices', 0, 0)",
    )
    .bind(processor)
    .bind(event_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("select pg_notify('dhanman_applied', $1)")
        .bind(processor)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// An API on `db` with consistency waits of up to `wait`, its listener listening, and the
/// key of a new organization, `society`.
async fn listening_api(
    db: &TestDb,
    society: &str,
    wait: Duration,
) -> (dhanman_api::consistency::Applied, Api) {
    let mut state = api_state(db);
    state.consistency_wait = wait;
    let applied = state.applied.clone();
    let api = Api::new(&serve_state(state).await, &org_key(db, society).await);
    eventually(
        "the consistency listener",
        Duration::from_secs(10),
        || async { applied.is_listening().then_some(()) },
    )
    .await;
    (applied, api)
}

/// A read of `path` under way, once its wait is registered.
async fn waiting_read(
    api: &Api,
    applied: &dhanman_api::consistency::Applied,
    path: String,
) -> tokio::task::JoinHandle<Reply> {
    let read = tokio::spawn({
        let api = api.clone();
        async move { api.get(&path).await }
    });
    eventually("the read to wait", Duration::from_secs(10), || async {
        (applied.waiting() == 1).then_some(())
    })
    .await;
    read
}

/// A trial balance read waiting for a new token, under way.
async fn trial_balance_waiting(
    api: &Api,
    applied: &dhanman_api::consistency::Applied,
) -> (Uuid, tokio::task::JoinHandle<Reply>) {
    let token = Uuid::now_v7();
    let path = format!("/v1/trial-balance?consistent_with={token}");
    (token, waiting_read(api, applied, path).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_query_is_answered_by_the_look_its_processors_batch_causes() {
    let db = TestDb::new().await;
    let (applied, api) = listening_api(&db, "Waiting Society", Duration::from_secs(30)).await;

    let (token, read) = trial_balance_waiting(&api, &applied).await;
    // Another processor's batch is heard first; the query waits on the ledger's.
    commit_batch(&db, "reminders", token).await;
    commit_batch(&db, "ledger", token).await;
    let reply = read.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(applied.woken_total(), 1, "answered by the batch's look");
    assert_eq!(applied.waiting(), 0);

    // A wait that expires leaves no token behind either.
    let mut state = api_state(&db);
    state.consistency_wait = Duration::from_millis(200);
    let expiring = state.applied.clone();
    let api = Api::new(
        &serve_state(state).await,
        &org_key(&db, "Hurried Society").await,
    );
    let reply = api
        .get(&format!(
            "/v1/trial-balance?consistent_with={}",
            Uuid::now_v7()
        ))
        .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(reply.body["error"], "not_yet_consistent");
    assert_eq!((expiring.waiting(), expiring.woken_total()), (0, 0));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_balance_takes_its_first_look_with_the_customer_and_waits_only_when_it_must() {
    let db = TestDb::new().await;
    let (applied, api) = listening_api(&db, "Balance Society", Duration::from_secs(30)).await;
    let customer = api.customer("Asha").await;
    let balance = |token: Uuid| format!("/v1/customers/{customer}/balance?consistent_with={token}");

    // Applied already: answered by the read's own first look, nothing waits.
    let done = Uuid::now_v7();
    commit_batch(&db, "ledger", done).await;
    let reply = api.get(&balance(done)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["name"], "Asha");
    assert_eq!((applied.waiting(), applied.woken_total()), (0, 0));

    // Not yet: the read waits for the ledger's batch and is woken by its look.
    let token = Uuid::now_v7();
    let read = waiting_read(&api, &applied, balance(token)).await;
    commit_batch(&db, "ledger", token).await;
    let reply = read.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!((applied.waiting(), applied.woken_total()), (0, 1));

    // Another organization's (or no) customer: 404 at once, no wait left behind; a token
    // that is not one: 422 naming it.
    let stranger = format!(
        "/v1/customers/{}/balance?consistent_with={}",
        Uuid::now_v7(),
        Uuid::now_v7()
    );
    let reply = api.get(&stranger).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(applied.waiting(), 0);
    let reply = api
        .get(&format!(
            "/v1/customers/{customer}/balance?consistent_with=soon"
        ))
        .await;
    assert_refused(&reply, 422, "consistent_with");
    db.drop_db().await;
}

/// A batch's notification that names its events wakes their waiters without a look (here
/// it names an event no gate row shows, which a look would not find); one naming other
/// events wakes nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_naming_its_events_wakes_their_waiters_without_a_look() {
    use dhanman_processors::applied::notification;
    let db = TestDb::new().await;
    let (applied, api) = listening_api(&db, "Named Society", Duration::from_secs(30)).await;
    let (token, read) = trial_balance_waiting(&api, &applied).await;
    for named in [
        vec![Uuid::now_v7(), Uuid::now_v7()],
        vec![Uuid::now_v7(), token],
    ] {
        sqlx::query("select pg_notify('dhanman_applied', $1)")
            .bind(notification("ledger", &named))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let reply = read.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (applied.woken_total(), applied.waiting()),
        (1, 0),
        "woken once, by the notification naming it"
    );
    db.drop_db().await;
}

/// A token stamped `ahead` of now, as one made by a process whose clock is ahead (or, with
/// a negative offset, made that long ago).
fn token_stamped(ahead: i64) -> Uuid {
    let at = chrono::Utc::now() + chrono::Duration::seconds(ahead);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap(),
        at.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts)
}

/// A token made since the listener began is looked for first in the events the batches
/// heard named: named already, the read answers without a look (none would find it here:
/// no gate row shows it); not yet, the read of a customer it has read before waits with no
/// statement at all, and the notification naming it wakes it. A token made before the
/// listener began is looked up in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_takes_its_first_look_in_the_events_heard_named() {
    use dhanman_processors::applied::notification;
    let db = TestDb::new().await;
    let (applied, api) = listening_api(&db, "Remembering Society", Duration::from_secs(2)).await;
    let customer = api.customer("Meera").await;
    let notify = async |ids: &[Uuid]| {
        sqlx::query("select pg_notify('dhanman_applied', $1)")
            .bind(notification("ledger", ids))
            .execute(&db.pool)
            .await
            .unwrap();
    };
    let balance = |token: Uuid| format!("/v1/customers/{customer}/balance?consistent_with={token}");
    assert_eq!(
        api.get(&format!("/v1/customers/{customer}/balance"))
            .await
            .status,
        200
    );

    // Named already: answered from memory.
    let named = token_stamped(3);
    notify(&[named]).await;
    eventually("the batch to be heard", Duration::from_secs(10), || async {
        (applied.remembered_now() == 1).then_some(())
    })
    .await;
    let reply = api.get(&balance(named)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["name"], "Meera");
    assert_eq!((applied.remembered_total(), applied.woken_total()), (1, 0));

    // Not yet: waits, woken by the notification naming it.
    let later = token_stamped(3);
    let read = waiting_read(&api, &applied, balance(later)).await;
    assert_eq!(
        applied.remembered_total(),
        2,
        "its first look taken in memory"
    );
    notify(&[later]).await;
    let reply = read.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!((applied.waiting(), applied.woken_total()), (0, 1));

    // Made before the listener began: the database's look finds it applied.
    let old = token_stamped(-60);
    commit_batch(&db, "ledger", old).await;
    let reply = api.get(&balance(old)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (applied.remembered_total(), applied.woken_total()),
        (2, 1),
        "answered by its own first look"
    );
    db.drop_db().await;
}

/// A listener that loses its connection sees it (no reconnection behind its back): while it
/// is gone nothing counts as heard, and once back, a token made before it listened again is
/// looked up in the database (here applied while it was gone, its notification lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_lost_its_connection_trusts_no_memory_of_the_time_before() {
    let db = TestDb::new().await;
    let (applied, api) = listening_api(&db, "Reconnecting Society", Duration::from_secs(2)).await;
    let customer = api.customer("Ravi").await;
    let token = token_stamped(3);
    let cut: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
          where datname = current_database() and query ilike 'listen%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(cut, 1, "the listener's session");
    eventually(
        "the listener to see it",
        Duration::from_secs(10),
        || async { (!applied.is_listening()).then_some(()) },
    )
    .await;
    commit_batch(&db, "ledger", token).await;
    eventually("the listener back", Duration::from_secs(10), || async {
        applied.is_listening().then_some(())
    })
    .await;
    let reply = api
        .get(&format!(
            "/v1/customers/{customer}/balance?consistent_with={token}"
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (applied.remembered_total(), applied.woken_total()),
        (0, 0),
        "answered by the database's first look"
    );
    db.drop_db().await;
}

/// A look names its processor in its statement, so each connection plans it for its first
/// calls only: with the name a parameter, once the gates had grown a plan made for the name
/// (only that processor's branches of `applied_events`) looked cheaper than the one kept
/// for any name, and Postgres planned every call anew (the parameterized `any` look: 15
/// plans in these 20 calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_for_applied_events_is_planned_once_per_connection() {
    use dhanman_processors::applied::{applied_among, has_applied};
    let db = TestDb::new().await;
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let (applied, unknown) = (Uuid::now_v7(), Uuid::now_v7());
    commit_batch(&db, "reminders", applied).await;
    let looks = async || {
        for _ in 0..10 {
            assert!(has_applied(&one, "reminders", applied).await.unwrap());
            assert!(!has_applied(&one, "ledger", unknown).await.unwrap());
            let among = applied_among(&one, "reminders", &[unknown, applied])
                .await
                .unwrap();
            assert_eq!(among, vec![applied]);
        }
    };
    // Planned first while the gates are empty, then again once they have grown (a new
    // plan for each look, made when the statistics change).
    looks().await;
    sqlx::query(
        "insert into processed_events (processor, event_id, topic, partition, \"offset\")
         select 'reminders', gen_random_uuid(), 'dhanman.invoices', 0, n
           from generate_series(1, 50000) n",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("analyze processed_events")
        .execute(&db.pool)
        .await
        .unwrap();
    looks().await;
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "select statement, generic_plans, custom_plans from pg_prepared_statements
          where statement like '%from applied_events%' and statement not like '%pg_prepared%'
          order by statement",
    )
    .fetch_all(&one)
    .await
    .unwrap();
    // Postgres plans a prepared statement for its first five calls, then keeps one plan
    // for any call unless a plan for the call's values looks cheaper.
    for (statement, generic, custom) in &plans {
        assert!(
            *custom <= 5 && *generic >= 15,
            "{statement}: {custom} custom plans and {generic} generic in 20 calls"
        );
    }
    assert_eq!(
        plans.len(),
        3,
        "one statement per look and processor: {plans:?}"
    );
    one.close().await;
    db.drop_db().await;
}
