//! `dhanman replay --processor ledger --topic T --correct [--execute]`: the range's events
//! against the entries in force for them, under the posting rules of this configuration
//! (`DHANMAN_LEDGER_ACCOUNTS`). A dry run (the default) prints the net change each
//! correction would make per account and per party; `--execute` posts the reversals and
//! corrected entries ([`dhanman_processors::ledger::correct`]), one transaction per batch.
//! Running it again posts nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use dhanman_processors::ledger::correct::{self, Outcome};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use super::{Args, Range, gather};

#[derive(Debug, Serialize)]
struct AccountChange {
    organization_id: Uuid,
    account_code: String,
    currency: String,
    /// Debits less credits the corrections add.
    net_debit: Decimal,
}

#[derive(Debug, Serialize)]
struct PartyChange {
    organization_id: Uuid,
    party_type: String,
    party_id: Uuid,
    account_code: String,
    currency: String,
    net_debit: Decimal,
}

#[derive(Debug, Serialize)]
struct Summary {
    processor: &'static str,
    topic: String,
    executed: bool,
    ranges: Vec<Range>,
    records: usize,
    /// Records that are not readable events (poison; the live consumer dead-letters them).
    unreadable: usize,
    unchanged: usize,
    not_posted: usize,
    corrected: usize,
    accounts: Vec<AccountChange>,
    parties: Vec<PartyChange>,
    seconds: f64,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    if args.processor != "ledger" {
        bail!(
            "--correct corrects the ledger's entries; processor {} posts none",
            args.processor
        );
    }
    let ledger = dhanman_processors::ledger::Ledger::default();
    let reads = args.config.topics_of(&ledger);
    if !reads.contains(&args.topic) {
        bail!(
            "processor ledger does not read {}; it reads {}",
            args.topic,
            reads.join(", ")
        );
    }
    let accounts = args.config.ledger_accounts().await?;
    let pool = args.config.pool().await?;
    let codec = args.config.codec()?;
    let ranges = args.ranges().await?;
    let started = Instant::now();
    let consumer = args.consumer(&ranges)?;
    let mut open: BTreeMap<i32, i64> = ranges
        .iter()
        .filter(|r| r.end > r.start)
        .map(|r| (r.partition, r.end))
        .collect();
    let mut outcome = Outcome::default();
    let (mut records, mut unreadable) = (0, 0);
    while !open.is_empty() {
        let batch = gather(&consumer, &mut open, args.config.batch_size.max(1)).await?;
        records += batch.len();
        let mut events = Vec::with_capacity(batch.len());
        for record in &batch {
            let Some(payload) = record.payload.as_deref() else {
                unreadable += 1;
                continue;
            };
            match codec.decode_event(payload).await {
                Ok(event) => events.push(event),
                Err(e) if e.is_transient() => {
                    return Err(e).context("the schema registry, decoding the range");
                }
                Err(_) => unreadable += 1,
            }
        }
        let mut tx = pool.begin().await?;
        if args.execute {
            correct::lock(&mut tx).await?;
        }
        correct::correct(&mut tx, &accounts, &events, args.execute, &mut outcome).await?;
        if args.execute {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
    }
    outcome.settle();
    let summary = Summary {
        processor: "ledger",
        topic: args.topic.clone(),
        executed: args.execute,
        ranges,
        records,
        unreadable,
        unchanged: outcome.unchanged,
        not_posted: outcome.not_posted,
        corrected: outcome.corrected,
        accounts: outcome
            .by_account
            .into_iter()
            .map(|((org, account, currency), net)| AccountChange {
                organization_id: org,
                account_code: account,
                currency,
                net_debit: net,
            })
            .collect(),
        parties: outcome
            .by_party
            .into_iter()
            .map(|((org, ptype, pid, account, currency), net)| PartyChange {
                organization_id: org,
                party_type: ptype,
                party_id: pid,
                account_code: account,
                currency,
                net_debit: net,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", table(&summary));
    }
    Ok(())
}

fn table(s: &Summary) -> String {
    let mut out = format!(
        "{} of the ledger over {} ({} records, {:.1}s)\n",
        if s.executed {
            "correction"
        } else {
            "dry run of a correction"
        },
        s.topic,
        s.records,
        s.seconds
    );
    out.push_str(&format!(
        "unchanged {}, to correct {} (a reversal and a corrected entry each), not posted yet {}, unreadable {}\n",
        s.unchanged, s.corrected, s.not_posted, s.unreadable
    ));
    if !s.accounts.is_empty() {
        out.push_str(&format!(
            "{:<38} {:<8} {:<4} {:>18}\n",
            "ORGANIZATION", "ACCOUNT", "CUR", "NET DEBIT"
        ));
        for a in &s.accounts {
            out.push_str(&format!(
                "{:<38} {:<8} {:<4} {:>18}\n",
                a.organization_id, a.account_code, a.currency, a.net_debit
            ));
        }
    }
    if !s.parties.is_empty() {
        out.push_str(&format!(
            "{:<47} {:<8} {:<4} {:>18}\n",
            "PARTY", "ACCOUNT", "CUR", "NET DEBIT"
        ));
        for p in &s.parties {
            out.push_str(&format!(
                "{:<47} {:<8} {:<4} {:>18}\n",
                format!("{}:{}", p.party_type, p.party_id),
                p.account_code,
                p.currency,
                p.net_debit
            ));
        }
    }
    out.push_str(if s.executed {
        "posted; a second run finds nothing to correct\n"
    } else {
        "nothing changed; add --execute to post the reversals and corrected entries\n"
    });
    out
}
