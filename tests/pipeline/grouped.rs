//! Single invoices written in groups (`POST /v1/invoices`, `invoice_group::write_group`):
//! a group without conflicts is one statement (its invoices share one transaction id) and
//! answers each command as writing it alone would: created, or 422 naming `customer_id`
//! for an unknown or inactive customer; each created invoice has its `InvoiceCreated` and
//! its first email addressed to its customer, and each key its stored response. A group
//! with a number or a key taken (inside the group or before it) writes each command alone:
//! the first of two takes the number or the key, the other is answered 409, and nothing is
//! written twice. The statement's plan, kept from while the tables were small, still looks
//! customers and keys up by key after they grew (the writers' sessions, `session`). Through
//! the API, many invoices sent at once are each answered, each created once, and a retry
//! with a key answers the first response. `DHANMAN_INVOICE_WRITERS` sets how many writers
//! (and sessions) there are; 0 is refused at start.

use dhanman_producers::idempotency::{Key, request_hash};
use dhanman_producers::invoice_group::{APPLICATION_NAME, Grouped, session, write_group};
use dhanman_producers::sales::{self, FirstEmail, NewCustomer, NewInvoice, prepare_invoice};
use dhanman_producers::{Caller, Error};
use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

struct Society {
    caller: Caller,
    /// Active customers, and one made inactive.
    asha: Uuid,
    bela: Uuid,
    inactive: Uuid,
}

async fn society(db: &TestDb) -> Society {
    let org = dhanman_producers::orgs::create_organization(&db.pool, "Grouped Society", None)
        .await
        .unwrap();
    let caller = Caller {
        organization_id: org.organization_id,
        role: "admin".into(),
        user_id: Some(org.user_id),
        correlation_id: "grouped".into(),
    };
    let mut conn = db.pool.acquire().await.unwrap();
    let mut customer = async |name: &str, email: &str| {
        let input: NewCustomer =
            serde_json::from_value(json!({"name": name, "email": email})).unwrap();
        sales::create_customer(&mut conn, &caller, input)
            .await
            .unwrap()
            .id
    };
    let asha = customer("Asha", "asha@example.org").await;
    let bela = customer("Bela", "bela@example.org").await;
    let inactive = customer("Chetan", "chetan@example.org").await;
    sqlx::query("update customers set active = false where id = $1")
        .bind(inactive)
        .execute(&db.pool)
        .await
        .unwrap();
    Society {
        caller,
        asha,
        bela,
        inactive,
    }
}

impl Society {
    /// A command for an invoice of `customer`, with `number` and `key` if given.
    fn command(&self, customer: Uuid, number: Option<&str>, key: Option<&str>) -> Grouped {
        let mut body = json!({"customer_id": customer, "amount": "120.50",
                              "issue_date": "2026-12-01", "due_date": due_date()});
        if let Some(n) = number {
            body["invoice_number"] = json!(n);
        }
        let input: NewInvoice = serde_json::from_value(body.clone()).unwrap();
        let invoice =
            prepare_invoice(&self.caller, input, Uuid::now_v7(), FirstEmail::Send).unwrap();
        let key = key.map(|key| Key {
            organization_id: self.caller.organization_id,
            user_id: self.caller.user_id.unwrap(),
            key: key.to_string(),
            request_hash: request_hash("POST", "/v1/invoices", body.to_string().as_bytes()),
        });
        Grouped {
            organization_id: self.caller.organization_id,
            invoice,
            key,
        }
    }
}

/// Each result as `created`, `422 <field>: <message>` or `409: <message>`.
fn outcomes(results: Vec<dhanman_producers::Result<()>>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| match r {
            Ok(()) => "created".to_string(),
            Err(Error::Validation(f)) => format!("422 {}: {}", f.field, f.message),
            Err(Error::Conflict(m)) => format!("409: {m}"),
            Err(e) => format!("other: {e}"),
        })
        .collect()
}

/// The transaction ids that wrote the invoices of `group` that exist.
async fn writers(db: &TestDb, group: &[Grouped]) -> Vec<String> {
    let ids: Vec<Uuid> = group.iter().map(|g| g.invoice.event.invoice_id).collect();
    sqlx::query_scalar("select xmin::text from invoices where id = any($1) order by id")
        .bind(&ids)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_group_answers_each_invoice_as_writing_it_alone_would() {
    let db = TestDb::new().await;
    let s = society(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();

    let first = vec![
        s.command(s.asha, None, None),
        s.command(s.bela, None, Some("k1")),
        s.command(Uuid::now_v7(), None, None),
        s.command(s.inactive, None, Some("k-inactive")),
        s.command(s.asha, Some("G-1"), Some("k2")),
    ];
    let answered = outcomes(write_group(&mut conn, &first).await);
    assert_eq!(
        answered,
        vec![
            "created",
            "created",
            "422 customer_id: no such customer in this organization",
            "422 customer_id: customer is inactive",
            "created",
        ]
    );
    let xids = writers(&db, &first).await;
    assert_eq!(xids.len(), 3, "the created invoices: {xids:?}");
    assert!(
        xids.iter().all(|x| *x == xids[0]),
        "a group without conflicts is one statement: {xids:?}"
    );

    // Each created invoice: its event and its first email, to its customer's address.
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "select i.id, o.record_name, o.payload->>'recipient'
           from invoices i join outbox o on (o.payload->>'invoice_id') = i.id::text
          order by i.id, o.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let created = [&first[0], &first[1], &first[4]];
    for g in created {
        let id = g.invoice.event.invoice_id;
        let mine: Vec<(&str, Option<&str>)> = rows
            .iter()
            .filter(|(i, ..)| *i == id)
            .map(|(_, name, to)| (name.as_str(), to.as_deref()))
            .collect();
        let to = if g.invoice.event.customer_id == s.asha {
            "asha@example.org"
        } else {
            "bela@example.org"
        };
        assert_eq!(
            mine.iter()
                .filter(|(n, _)| n.ends_with("InvoiceCreated"))
                .count(),
            1,
            "{mine:?}"
        );
        assert_eq!(
            mine.iter()
                .filter(|(n, _)| n.ends_with("SendInvoiceEmail"))
                .map(|(_, r)| *r)
                .collect::<Vec<_>>(),
            vec![Some(to)],
            "{mine:?}"
        );
    }
    // The keys of the created commands, with their responses; none for the refused.
    let keys: Vec<(String, i32, Value)> = sqlx::query_as(
        "select idempotency_key, response_status, response_body::jsonb from idempotency_keys
          order by idempotency_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(String, i32, Value)> = [("k1", &first[1]), ("k2", &first[4])]
        .into_iter()
        .map(|(k, g)| {
            let body = serde_json::to_value(&g.invoice.created).unwrap();
            (k.to_string(), 201, body)
        })
        .collect();
    assert_eq!(keys, expected);

    let second = vec![
        s.command(s.bela, Some("G-2"), None),
        s.command(s.asha, Some("G-2"), None),
        s.command(s.asha, None, Some("k1")),
        s.command(s.bela, Some("G-1"), None),
        s.command(s.asha, None, Some("k3")),
        s.command(s.asha, None, Some("k3")),
    ];
    let taken = "409: Idempotency-Key was taken by a request running at the same time";
    assert_eq!(
        outcomes(write_group(&mut conn, &second).await),
        vec![
            "created",
            "409: invoice_number G-2 already exists in this organization",
            taken,
            "409: invoice_number G-1 already exists in this organization",
            "created",
            taken,
        ]
    );
    let xids = writers(&db, &second).await;
    assert_eq!(xids.len(), 2, "{xids:?}");
    assert_ne!(xids[0], xids[1], "a group with a conflict is written alone");
    let counts: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from invoices), (select count(*) from outbox
                  where record_name like '%InvoiceCreated' or record_name like '%SendInvoiceEmail'),
                (select count(*) from idempotency_keys)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(counts, (5, 10, 3));
    drop(conn);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_sent_at_once_are_each_answered_and_created_once() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let api = Api::new(&base, &org_key(&db, "Busy Society").await);
    let customers = [api.customer("Asha").await, api.customer("Bela").await];
    let body = |i: usize| {
        json!({"customer_id": customers[i % 2], "amount": format!("{}.25", 100 + i),
               "due_date": "2026-12-31"})
    };
    let send = |i: usize, body: Value| {
        let request = api
            .http
            .post(format!("{base}/v1/invoices"))
            .header("idempotency-key", format!("busy-{i}"))
            .json(&body);
        api.send(request)
    };
    let unknown = json!({"customer_id": Uuid::now_v7(), "amount": "1.00",
                         "due_date": "2026-12-31"});
    let replies = join_all((0..200).map(|i| {
        let b = if i % 25 == 24 {
            unknown.clone()
        } else {
            body(i)
        };
        send(i, b)
    }))
    .await;
    let mut created = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        if i % 25 == 24 {
            assert_refused(r, 422, "customer_id");
        } else {
            assert_eq!(r.status, 201, "{i}: {}", r.body);
            assert_eq!(r.body["amount"], format!("{}.25", 100 + i), "{}", r.body);
            created.push(r.body["invoice_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(created.len(), 192);
    let (invoices, events): (i64, i64) = sqlx::query_as(
        "select (select count(distinct id) from invoices where id::text = any($1)),
                (select count(*) from outbox where record_name like '%InvoiceCreated')",
    )
    .bind(&created)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((invoices, events), (192, 192));

    // Retries, all at once: the first responses, nothing new.
    let again = join_all((0..200).filter(|i| i % 25 != 24).map(|i| send(i, body(i)))).await;
    let answered: Vec<String> = again
        .iter()
        .map(|r| {
            r.body["invoice_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(answered, created);
    let invoices: i64 = sqlx::query_scalar("select count(*) from invoices")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(invoices, 192);
    db.drop_db().await;
}

/// Postgres keeps one plan for a statement it has run five times, made with the tables'
/// sizes of that moment. The writers' statement, planned while the tables were small, still
/// looks customers and keys up by key once they have grown.
#[tokio::test]
async fn groups_look_customers_and_keys_up_by_key_after_the_tables_grew() {
    let db = TestDb::new().await;
    let s = society(&db).await;
    sqlx::query("analyze").execute(&db.pool).await.unwrap();
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let mut session = sqlx::ConnectOptions::connect(&session(options))
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut session).await.unwrap();
    let mut n = 0;
    let mut round = async |tx: &mut sqlx::PgConnection| {
        let group: Vec<Grouped> = (0..3)
            .map(|i| {
                n += 1;
                let customer = if i % 2 == 0 { s.asha } else { s.bela };
                s.command(customer, None, Some(&format!("plan-{n}")))
            })
            .collect();
        let answered = outcomes(write_group(tx, &group).await);
        assert_eq!(answered, vec!["created"; 3]);
    };
    for _ in 0..8 {
        round(&mut tx).await;
    }
    // The society's next years, before the statistics are renewed.
    sqlx::query(
        "insert into customers (id, organization_id, name)
         select gen_random_uuid(), $1, 'Resident ' || n from generate_series(1, 20000) n",
    )
    .bind(s.caller.organization_id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into idempotency_keys (organization_id, user_id, idempotency_key, request_hash,
                                       response_status, response_body)
         select $1, $2, 'earlier-' || n, '\\x00', 201, '{}' from generate_series(1, 50000) n",
    )
    .bind(s.caller.organization_id)
    .bind(s.caller.user_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let tables = ["customers", "idempotency_keys"];
    let mut before = Vec::new();
    for table in tables {
        before.push(crate::database::scans(&mut tx, table).await);
    }
    for _ in 0..4 {
        round(&mut tx).await;
    }
    for (table, (seq0, idx0)) in tables.into_iter().zip(before) {
        let (seq1, idx1) = crate::database::scans(&mut tx, table).await;
        assert_eq!(seq1 - seq0, 0, "{table} read whole");
        assert!(idx1 > idx0, "{table} looked up by key");
    }
    drop(tx);
    drop(session);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_are_as_many_as_configured() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    setup
        .refuses_to_start(
            &["up"],
            ("DHANMAN_INVOICE_WRITERS", "0"),
            "DHANMAN_INVOICE_WRITERS=0",
        )
        .await;

    let up = setup.spawn_with_env(&["up"], &[("DHANMAN_INVOICE_WRITERS", "1")]);
    setup.wait_ready(&up).await;
    let (_, key) = create_org(&setup, "One Writer Court").await;
    let api = Api::new(&setup.base_url(), &key);
    let asha = api.customer("Asha").await;
    let replies = join_all((0..64).map(|i| {
        api.post(
            "/v1/invoices",
            json!({"customer_id": asha, "amount": format!("{}.00", 10 + i),
                   "due_date": "2026-12-31"}),
        )
    }))
    .await;
    assert!(
        replies.iter().all(|r| r.status == 201),
        "{}",
        replies[0].body
    );
    assert_eq!(db.count("select count(*) from invoices").await, 64);
    // Every one of them was written through the one writer's session.
    let sessions: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity
          where datname = current_database() and application_name = $1",
    )
    .bind(APPLICATION_NAME)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sessions, 1);
    drop(up);
    db.drop_db().await;
}
