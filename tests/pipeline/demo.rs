//! `dhanman demo`, as the README's quick start runs it, on the test's database and topics:
//! it exits 0 with a balanced trial balance, and every notification it lists was sent and
//! received by its in-process SMTP server (five invoices, three receipts, two approval
//! requests, and a reminder for each of the two invoices left unpaid, due within the
//! reminders' lead time, among them). Run again right after a run that was killed (its members still in
//! their groups until their sessions time out), it waits for its processors to join before
//! it reads, and passes. A welcome email an earlier run's society left pending for the same
//! address, delivered to this run's SMTP server, is not the invitation it redeems.

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
    // "notifications: 16 sent; 16 of them received by the demo's SMTP server:"
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
    // Rahul and Joseph pay nothing; their invoices fall due within the reminders' lead
    // time, the others' after the demo.
    assert_eq!(count(" Reminder: invoice "), 2, "{out}");
    for resident in ["rahul@", "joseph@"] {
        assert!(
            listed
                .iter()
                .any(|l| l.contains(resident) && l.contains(" Reminder: ")),
            "{out}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_left_pending_by_an_earlier_society_is_not_redeemed() {
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    // An earlier society invited the same manager; its run stopped before the email went.
    let (earlier, _) = create_org(&setup, "Green Meadows Co-operative Housing Society").await;
    let stale = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into notification_deliveries
             (event_id, recipient, template, organization_id, correlation_id, event_type,
              source_topic, message_id, subject, body_text)
         values ($1, 'manager@greenmeadows.example', 'welcome', $2, 'earlier-run',
                 'UserCreated', 'dhanman.common.users', $3, 'Welcome',
                 'Your invitation code:\n\n    dhi_0000000000000000000000000000000000000000\n')",
    )
    .bind(stale)
    .bind(earlier)
    .bind(format!("<{stale}@earlier.example>"))
    .execute(&db.pool)
    .await
    .unwrap();

    let run = dhanman(&setup, &["demo"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("approved by manager and cfo"),
        "{}",
        run.stdout
    );
    // The earlier society's email did reach this run's server.
    let status: String =
        sqlx::query_scalar("select status from notification_deliveries where event_id = $1")
            .bind(stale)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "sent");
    db.drop_db().await;
}
