//! A setting that would panic, stall or spin a process (a pool of no connections, batches of
//! nothing, an interval of zero) is refused before the process starts: it exits with code 2,
//! naming the variable and the value it read, and no panic.

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
