//! How the pipeline uses Postgres: its processes open their sessions with JIT compilation
//! off (`dhanman_ops::connect_options`, used by every process's pool), keeping options the
//! URL sets itself.

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
