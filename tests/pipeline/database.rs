//! How the pipeline uses Postgres: its processes open their sessions with JIT compilation
//! off (`dhanman_ops::connect_options`, used by every process's pool), keeping options the
//! URL sets itself; an invoice's payments are read through an index, not by reading every
//! payment.

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
