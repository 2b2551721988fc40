//! A setting that would panic, stall or spin a process (a pool of no connections, batches of
//! nothing, an interval of zero) is refused before the process starts: it exits with code 2,
//! naming the variable and the value it read, and no panic. A start that cannot reach
//! Postgres says where it tried and why; one that cannot reach the broker says it is waiting
//! for it, and why, instead of a silent minute. A process started without
//! `MALLOC_ARENA_MAX` runs with two malloc arenas; one started with it keeps its value.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_would_stall_or_spin_are_refused_naming_the_variable() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    for (args, variable, value) in [
        (&["up"][..], "DHANMAN_DB_POOL", "0"),
        (&["up"], "DHANMAN_INVOICE_WRITERS", "0"),
        (&["up"], "DHANMAN_LAG_INTERVAL_MS", "0"),
        (&["up"], "DHANMAN_RETENTION_INTERVAL", "0s"),
        (&["process", "ledger"], "DHANMAN_BATCH_SIZE", "0"),
        (&["process", "ledger"], "DHANMAN_LANES", "0"),
        (&["process", "notifier"], "DHANMAN_SMTP_CONCURRENCY", "0"),
        (&["relay"], "DHANMAN_TOPIC_PARTITIONS", "0"),
        (&["relay"], "DHANMAN_DB_POOL", "99999999999"),
        (&["up"], "DHANMAN_TOPIC_PREFIX", "a b/"),
        (&["up"], "DHANMAN_PO_CFO_THRESHOLD", "-5"),
    ] {
        let run = dhanman_with_env(&setup, args, &[(variable, value)]).await;
        let said = &run.stderr;
        assert_eq!(run.code, Some(2), "{args:?} {variable}={value}: {said}");
        assert!(
            said.contains(&format!("(read from {variable}={value})")),
            "{said}"
        );
        assert!(!said.contains("panicked"), "{said}");
    }
    // Given as a flag, the error names the flag, and no variable.
    let run = dhanman(&setup, &["process", "ledger", "--lanes", "0"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("'--lanes <LANES>'"), "{}", run.stderr);
    assert!(!run.stderr.contains("read from"), "{}", run.stderr);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_reach_its_services_says_where_and_why() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let closed = free_port();
    let nowhere = format!("postgres://postgres@127.0.0.1:{closed}/dhanman");
    let run = dhanman_with_env(&setup, &["migrate"], &[("DHANMAN_DATABASE_URL", &nowhere)]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&format!(
            "connecting to Postgres at 127.0.0.1:{closed}/dhanman"
        )) && run.stderr.contains("Connection refused"),
        "{}",
        run.stderr
    );

    let broker = format!("127.0.0.1:{closed}");
    let mut waiting = setup.spawn_with_env(&["relay"], &[("KAFKA_BOOTSTRAP_SERVERS", &broker)]);
    waiting
        .wait_for_log("waiting for the broker", Duration::from_secs(30))
        .await;
    assert!(
        waiting.log_text().contains(&broker),
        "{}",
        waiting.log_text()
    );
    waiting.kill().await;
    db.drop_db().await;
}

/// `MALLOC_ARENA_MAX` in the environment the process `pid` runs with, once it has one.
async fn arena_max(pid: u32) -> String {
    eventually(
        "the process's MALLOC_ARENA_MAX",
        Duration::from_secs(30),
        || async move {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ
                .split(|b| *b == 0)
                .filter_map(|v| v.strip_prefix(b"MALLOC_ARENA_MAX="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .next()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_runs_with_two_malloc_arenas_unless_told_otherwise() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // Unset here, it must become 2; set for the whole test run, it must be kept.
    let inherited = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into());
    let mut relay = setup.spawn(&["relay"]);
    let pid = relay.child.id().expect("the relay is running");
    assert_eq!(arena_max(pid).await, inherited);
    // The process it became does its work.
    relay
        .wait_for_log(
            "outbox relay is the active publisher",
            Duration::from_secs(30),
        )
        .await;
    relay.kill().await;

    let mut told = setup.spawn_with_env(&["relay"], &[("MALLOC_ARENA_MAX", "4")]);
    let pid = told.child.id().expect("the relay is running");
    assert_eq!(arena_max(pid).await, "4");
    told.kill().await;
    db.drop_db().await;
}
