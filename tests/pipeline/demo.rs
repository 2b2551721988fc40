//! `dhanman demo`, as the README's quick start runs it, on the test's database and topics:
//! it exits 0 with a balanced trial balance, and every notification it lists was sent and
//! received by its in-process SMTP server (five invoices, three receipts, two approval
//! requests among them). Run again after the broker has lost records a processor had read
//! (a stored offset past its log's end), it refuses at once, naming the group, the partition
//! and the remedy, before it writes anything.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_balanced_books_and_its_mail_then_refuses_a_broker_that_lost_records() {
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

    // The broker "loses" the last records of one partition the ledger had read: its stored
    // offset now lies past the log's end.
    let (group, topic, partition, stored): (String, String, i32, i64) = sqlx::query_as(
        "update consumer_offsets set next_offset = next_offset + 1000
          where (group_id, topic, partition) = (
                select group_id, topic, partition from consumer_offsets
                 where group_id like '%ledger' order by topic, partition limit 1)
          returning group_id, topic, partition, next_offset",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let societies = db.count("select count(*) from organizations").await;
    let again = dhanman(&setup, &["demo"]).await;
    assert!(!again.ok, "{}\n{}", again.stdout, again.stderr);
    let said = &again.stderr;
    assert!(
        said.contains(&format!(
            "{group} on {topic}[{partition}]: stored offset {stored}, log end "
        )),
        "{said}"
    );
    assert!(said.contains("dhanman offsets reset --group"), "{said}");
    assert_eq!(
        db.count("select count(*) from organizations").await,
        societies,
        "nothing written before the refusal"
    );
    db.drop_db().await;
}
