//! `dhanman demo`, as the README's quick start runs it, on the test's database and topics:
//! it exits 0 with a balanced trial balance, and every notification it lists was sent and
//! received by its in-process SMTP server (five invoices, three receipts, two approval
//! requests among them). Run again right after a run that was killed (its members still in
//! their groups until their sessions time out), it waits for its processors to join before
//! it reads, and passes.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_balanced_books_and_the_mail_it_received() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let run = dhanman(&setup, &["demo"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("balanced: true"), "{out}");
    assert!(
        !out.contains("partial"),
        "the pipeline must settle: {out}\n{}",
        run.stderr
    );
    // "notifications: 14 sent; 14 of them received by the demo's SMTP server:"
    let (head, rest) = out
        .split_once("notifications: ")
        .and_then(|(_, r)| r.split_once('\n'))
        .unwrap_or_else(|| panic!("no notifications line: {out}"));
    let words: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(words[1], "sent;", "every notification is sent: {head}");
    let sent: usize = words[0].parse().unwrap();
    let received: usize = words[2].parse().unwrap();
    assert_eq!(sent, received, "{head}");
    let listed: Vec<&str> = rest.lines().take_while(|l| l.starts_with("  ")).collect();
    assert_eq!(listed.len(), sent, "{out}");
    // Five residents invoiced, three payments received, two approvers asked.
    let count = |what: &str| listed.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count(" Invoice INV-"), 5, "{out}");
    assert_eq!(count(" Payment received: "), 3, "{out}");
    assert_eq!(count(" Approval needed: "), 2, "{out}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_right_after_a_killed_one_waits_for_its_processors_to_join() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let mut killed = setup.spawn(&["demo"]);
    let pid = killed.child.id().expect("the demo is running");
    let ledger = format!("{}dhanman.ledger", setup.topic_prefix);
    eventually(
        "the first demo's ledger in its group",
        Duration::from_secs(60),
        || async {
            let group = describe_group(&ledger).await;
            (group.state == "Stable"
                && group
                    .members
                    .iter()
                    .any(|m| m.client_id.ends_with(&format!("-{pid}"))))
            .then_some(())
        },
    )
    .await;
    killed.kill().await;

    let run = dhanman(&setup, &["demo"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("balanced: true"), "{}", run.stdout);
    db.drop_db().await;
}
