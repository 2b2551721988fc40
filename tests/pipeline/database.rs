//! How the pipeline uses Postgres: its processes open their sessions with JIT compilation
//! off (`dhanman_ops::connect_options`, used by every process's pool), keeping options the
//! URL sets itself; an invoice's payments are read through an index, not by reading every
//! payment; and small batches of the reminders processor and the notifier, after their
//! statements have run while the tables were small, look invoices, customers, payments and
//! timers up by key once the tables have grown past their statistics.

use crate::helpers::*;

async fn setting(url: &str, names: &[&str]) -> Vec<String> {
    let options = dhanman_ops::connect_options(url).expect("the URL parses");
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .expect("a session");
    let mut values = Vec::new();
    for name in names {
        let value: String = sqlx::query_scalar("select current_setting($1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        values.push(value);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_compile_no_statement_and_keep_the_urls_own_options() {
    let db = TestDb::new().await;
    // A session opened as the URL alone says has the server's default, on (Postgres's own
    // default, which the services here keep), so the `off` below is the session's start.
    let plain: String = sqlx::query_scalar("select current_setting('jit')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(plain, "on", "the server's default for jit");
    assert_eq!(setting(&db.url, &["jit"]).await, ["off"]);
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let with_own = format!("{}{separator}options=-c%20statement_timeout%3D4321", db.url);
    assert_eq!(
        setting(&with_own, &["jit", "statement_timeout"]).await,
        ["off", "4321ms"]
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoices_payments_are_read_through_an_index() {
    let db = TestDb::new().await;
    let org = dhanman_producers::orgs::create_organization(&db.pool, "Index Society", None)
        .await
        .unwrap()
        .organization_id;
    let (customer, invoice) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sqlx::query("insert into customers (id, organization_id, name) values ($1, $2, 'Asha')")
        .bind(customer)
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                               currency, issue_date, due_date)
         values ($1, $2, $3, 'INV-1', 900, 'INR', '2026-12-01', '2026-12-10')",
    )
    .bind(invoice)
    .bind(org)
    .bind(customer)
    .execute(&db.pool)
    .await
    .unwrap();
    // Years of payments on account, and three for the invoice.
    sqlx::query(
        "insert into payments (id, organization_id, customer_id, invoice_id, amount, currency,
                               method)
         select gen_random_uuid(), $1, $2, case when n <= 3 then $3::uuid end, 100, 'INR', 'upi'
           from generate_series(1, 20000) n",
    )
    .bind(org)
    .bind(customer)
    .bind(invoice)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("analyze payments")
        .execute(&db.pool)
        .await
        .unwrap();
    // The shape of every read of an invoice's payments (the payment command's, the invoice's
    // `amount_paid`, the reminders' judgment of whether it is settled).
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "explain select count(*), coalesce(sum(amount), 0) from payments
          where invoice_id = '{invoice}'"
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("payments_invoice"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let (count, sum): (i64, rust_decimal::Decimal) = sqlx::query_as(
        "select count(*), coalesce(sum(amount), 0) from payments where invoice_id = $1",
    )
    .bind(invoice)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((count, sum), (3, rust_decimal::Decimal::from(300)));
    db.drop_db().await;
}

/// What one round of small batches did to a table, in the transaction that ran them.
pub(crate) async fn scans(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "select seq_scan, coalesce(idx_scan, 0) from pg_stat_xact_user_tables
          where relname = $1",
    )
    .bind(table)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The tables a society's command side grows: `invoices` more invoices (each with a timer
/// unless it is among `unscheduled`) and as many payments on account.
async fn grow(
    db: &TestDb,
    org: uuid::Uuid,
    customers: &[uuid::Uuid],
    invoices: i32,
    unscheduled: &[uuid::Uuid],
) -> Vec<(uuid::Uuid, uuid::Uuid)> {
    let made: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "insert into invoices (id, organization_id, customer_id, invoice_number, amount,
                               currency, issue_date, due_date)
         select gen_random_uuid(), $1, ($2::uuid[])[1 + n % cardinality($2)],
                'INV-' || gen_random_uuid(), 900, 'INR', '2026-12-01', '2026-12-10'
           from generate_series(1, $3) n
         returning id, customer_id",
    )
    .bind(org)
    .bind(customers)
    .bind(invoices)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into payments (id, organization_id, customer_id, amount, currency, method)
         select gen_random_uuid(), $1, ($2::uuid[])[1 + n % cardinality($2)], 100, 'INR', 'upi'
           from generate_series(1, $3) n",
    )
    .bind(org)
    .bind(customers)
    .bind(invoices)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into payment_reminders (invoice_id, organization_id, customer_id, state,
                                        fire_at, amount, currency, due_date)
         select id, organization_id, customer_id, 'scheduled', '2026-11-10', amount, currency,
                due_date
           from invoices where id = any($1) and not id = any($2)",
    )
    .bind(made.iter().map(|i| i.0).collect::<Vec<_>>())
    .bind(unscheduled)
    .execute(&db.pool)
    .await
    .unwrap();
    made
}

/// Rounds of small batches as a steady load makes them: the reminders processor schedules
/// three invoices and applies a payment of one, the notifier looks up three emails' facts.
async fn rounds(
    conn: &mut sqlx::PgConnection,
    org: uuid::Uuid,
    invoices: &[(uuid::Uuid, uuid::Uuid)],
) {
    use dhanman_processors::Processor;
    use dhanman_processors::notifier::{Notifier, Templates};
    use dhanman_processors::reminders::Reminders;
    use dhanman_schemas::Event;
    use dhanman_schemas::events::{Envelope, SendInvoiceEmail};
    let reminders = Reminders::new(30);
    let notifier = Notifier::new(Templates::new(None));
    for round in invoices.chunks(3) {
        let created: Vec<Event> = round
            .iter()
            .map(|&(invoice_id, customer_id)| {
                let mut e = invoice_created(org, customer_id, "INV", "900.00");
                e.invoice_id = invoice_id;
                Event::InvoiceCreated(e)
            })
            .collect();
        let (invoice_id, customer_id) = round[0];
        let mut paid = payment(org, customer_id, 90_000, "paid");
        paid.invoice_id = Some(invoice_id);
        let emails: Vec<Event> = round
            .iter()
            .map(|&(invoice_id, customer_id)| {
                Event::SendInvoiceEmail(SendInvoiceEmail {
                    envelope: Envelope::new(org, "email", None),
                    invoice_id,
                    customer_id,
                    recipient: "r@example.org".into(),
                    amount: "900.00".parse().unwrap(),
                    currency: "INR".into(),
                    due_date: due_date(),
                    template: None,
                })
            })
            .collect();
        let paid = Event::PaymentReceived(paid);
        let created: Vec<&Event> = created.iter().collect();
        let emails: Vec<&Event> = emails.iter().collect();
        reminders.apply(conn, &created).await.unwrap();
        reminders.apply(conn, &[&paid]).await.unwrap();
        notifier.apply(conn, &emails).await.unwrap();
    }
}

const LOOKED_UP: [&str; 4] = ["invoices", "customers", "payments", "payment_reminders"];

/// Each table's (whole reads, look-ups by key) in the session's transaction so far.
async fn all_scans(conn: &mut sqlx::PgConnection) -> Vec<(i64, i64)> {
    let mut all = Vec::new();
    for table in LOOKED_UP {
        all.push(scans(conn, table).await);
    }
    all
}

/// Postgres plans a statement it has run five times once for any input, with the tables'
/// statistics of that moment. Tables that grew since (a new society's first weeks, a
/// backfill into a fresh database: faster than their statistics are renewed) must not turn
/// a batch's look-ups into reads of whole tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_look_up_by_key_and_read_no_table_whole() {
    let db = TestDb::new().await;
    let org = dhanman_producers::orgs::create_organization(&db.pool, "Busy Society", None)
        .await
        .unwrap()
        .organization_id;
    let customers: Vec<uuid::Uuid> = sqlx::query_scalar(
        "insert into customers (id, organization_id, name, email)
         select gen_random_uuid(), $1, 'Resident ' || n, 'r' || n || '@example.org'
           from generate_series(1, 2000) n
         returning id",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // The first month: a few invoices, the statistics up to date.
    let first = grow(&db, org, &customers, 36, &[]).await;
    sqlx::query("delete from payment_reminders")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("analyze").execute(&db.pool).await.unwrap();

    // A session of its own, one transaction, so that its counts are of these rounds alone.
    let mut session = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut session).await.unwrap();
    rounds(&mut tx, org, &first[..18]).await;

    // Years more, before the statistics are renewed; the rest of the month's invoices
    // have no timer yet.
    let rest: Vec<uuid::Uuid> = first[18..].iter().map(|i| i.0).collect();
    grow(&db, org, &customers, 20_000, &rest).await;
    let before = all_scans(&mut tx).await;
    rounds(&mut tx, org, &first[18..]).await;
    let after = all_scans(&mut tx).await;
    for ((table, (seq0, idx0)), (seq1, idx1)) in LOOKED_UP.iter().zip(before).zip(after) {
        assert_eq!(
            seq1 - seq0,
            0,
            "{table} read whole ({} look-ups by key)",
            idx1 - idx0
        );
        assert!(idx1 > idx0, "{table} looked up by key");
    }
    drop(tx);
    drop(session);
    db.drop_db().await;
}
