//! The campaign's verdict: once the pipeline has settled, the books against the commands
//! the load saw acknowledged.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use anyhow::bail;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use super::load::Record;

/// The summary line, and what makes it clean.
#[derive(Debug)]
pub struct Summary {
    pub rounds: u32,
    pub commands: usize,
    /// Acknowledged commands whose event has no journal entry.
    pub lost: usize,
    /// Effects applied more than once: journal entries or payments beyond one per event,
    /// charges beyond one per paid invoice.
    pub doubled: usize,
    /// Customers whose receivable in the books differs from what the acknowledged
    /// commands make it.
    pub receivables_off: usize,
    /// Emails the SMTP server received more than once (same Message-ID).
    pub emails_doubled: usize,
    pub audit_violations: usize,
    pub unanswered: usize,
}

impl Summary {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.receivables_off == 0
            && self.emails_doubled == 0
            && self.audit_violations == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rounds {}, commands {}, lost {}, doubled {}, receivables off {}, emails doubled {}, \
             audit violations {}",
            self.rounds,
            self.commands,
            self.lost,
            self.doubled,
            self.receivables_off,
            self.emails_doubled,
            self.audit_violations
        )?;
        if self.unanswered > 0 {
            write!(f, " ({} commands never answered)", self.unanswered)?;
        }
        Ok(())
    }
}

/// Waits (up to five minutes) until the pipeline has done all it was given: the outbox
/// published, every group of the campaign's topics at the end of every partition, no
/// payment saga or email half done; twice in a row.
pub async fn settle(pool: &PgPool, bootstrap: &str, prefix: &str, api: &str) -> anyhow::Result<()> {
    let probe = dhanman_connectors::kafka::probe(bootstrap)?;
    let scope = dhanman_connectors::lag::Scope {
        topic_prefix: prefix.to_string(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut quiet = 0;
    let mut busy = String::new();
    while tokio::time::Instant::now() < deadline {
        let (outbox, _) = dhanman_connectors::gauges::outbox_backlog(pool).await?;
        let (sagas,): (i64,) = sqlx::query_as(
            "select count(*) from payment_sagas where state in ('started', 'charging', 'charged')",
        )
        .fetch_one(pool)
        .await?;
        let (mails,): (i64,) = sqlx::query_as(
            "select count(*) from notification_deliveries where status in ('pending', 'sending')",
        )
        .fetch_one(pool)
        .await?;
        let lagging: i64 = match dhanman_connectors::lag::measure(pool, &probe, &scope).await {
            Ok(report) => report.groups.iter().map(|g| g.lag).sum(),
            Err(_) => 1,
        };
        if outbox + sagas + mails + lagging == 0 {
            quiet += 1;
            if quiet == 2 {
                return Ok(());
            }
        } else {
            quiet = 0;
            busy =
                format!("outbox {outbox}, sagas {sagas}, emails {mails}, records unread {lagging}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    bail!("the pipeline did not settle within 5 minutes ({busy}); API at {api}")
}

/// The books against the acknowledged commands.
pub async fn books(
    pool: &PgPool,
    rounds: u32,
    record: &Record,
    smtp: &dhanman_devpeers::smtp::SmtpSink,
    gateway_url: &str,
) -> anyhow::Result<Summary> {
    let events: Vec<Uuid> = record.commands.iter().map(|c| c.event_id).collect();
    let (posted,): (i64,) =
        sqlx::query_as("select count(*) from journal_entries where source_event_id = any($1)")
            .bind(&events)
            .fetch_one(pool)
            .await?;
    let lost = events.len().saturating_sub(usize::try_from(posted)?);

    // One row per acknowledged command on the command side (a retried command replays,
    // never runs twice), and a charge per paid invoice: never more.
    let mut doubled = 0;
    for (table, kinds) in [
        ("invoices", &["invoice"][..]),
        ("payments", &["manual_payment", "gateway_payment"][..]),
        ("salaries", &["salary"][..]),
        ("bills", &["bill"][..]),
    ] {
        let (rows,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(pool)
                .await?;
        let acked = record
            .commands
            .iter()
            .filter(|c| kinds.contains(&c.kind))
            .count();
        let extra = usize::try_from(rows)?.saturating_sub(acked + record.unanswered);
        if extra > 0 {
            eprintln!("{table}: {rows} rows for {acked} acknowledged commands");
        }
        doubled += extra;
    }
    let charges: serde_json::Value = reqwest::get(format!("{gateway_url}/v1/charges"))
        .await?
        .json()
        .await?;
    let mut kept_per_reference: HashMap<String, usize> = HashMap::new();
    for charge in charges["charges"].as_array().into_iter().flatten() {
        let refunded = charge["amount_refunded"].as_str() == charge["amount"].as_str();
        if charge["status"] != "declined" && !refunded {
            *kept_per_reference
                .entry(charge["reference"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    doubled += kept_per_reference
        .values()
        .map(|n| n.saturating_sub(1))
        .sum::<usize>();

    // Every customer's receivable: what the acknowledged commands make it, and the books.
    let mut expected: HashMap<Uuid, Decimal> = HashMap::new();
    for (customer, delta) in record.commands.iter().filter_map(|c| c.receivable) {
        *expected.entry(customer).or_default() += delta;
    }
    let booked: Vec<(Uuid, Decimal)> = sqlx::query_as(
        "select party_id, debit_total - credit_total from party_balances where account_code = '1200'",
    )
    .fetch_all(pool)
    .await?;
    let booked: HashMap<Uuid, Decimal> = booked.into_iter().collect();
    let receivables_off = expected
        .iter()
        .filter(|(customer, amount)| booked.get(customer).copied().unwrap_or_default() != **amount)
        .count()
        + booked
            .iter()
            .filter(|(customer, amount)| !expected.contains_key(customer) && !amount.is_zero())
            .count();

    let mut seen: HashMap<String, usize> = HashMap::new();
    for mail in smtp.messages() {
        *seen.entry(mail.message_id()).or_default() += 1;
    }
    let emails_doubled = seen.values().map(|n| n.saturating_sub(1)).sum();

    let audit = dhanman_processors::audit::audit(pool).await?;
    for v in &audit.violations {
        eprintln!("audit: {} {} {}", v.kind, v.subject, v.detail);
    }
    Ok(Summary {
        rounds,
        commands: record.commands.len(),
        lost,
        doubled,
        receivables_off,
        emails_doubled,
        audit_violations: audit.violations.len(),
        unanswered: record.unanswered,
    })
}
