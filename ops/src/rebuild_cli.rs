//! `dhanman rebuild balances|users`: a projection recomputed from scratch into shadow
//! tables and swapped in atomically while the pipeline runs; without `--execute` only a
//! report of what differs.
//!
//! - `balances`: account and party balances from the immutable postings
//!   ([`dhanman_processors::balances`]).
//! - `users`: the users projection, by running its processor over the whole of its topics
//!   into tables of a shadow schema (`dhanman_shadow`, first on the search path, so the
//!   processor's SQL is unchanged). The swap's transaction locks the live tables, applies
//!   what was published meanwhile, and replaces their rows. A projection qualifies when its
//!   writes are upserts keyed by the entity: an event the live processor applies again
//!   after the swap (it was waiting on the lock) changes nothing.

use std::collections::BTreeMap;

use anyhow::Context;
use dhanman_connectors::kafka::{StoredRecord, read_to_end};
use dhanman_processors::Processor;
use dhanman_processors::balances;
use dhanman_schemas::{Codec, Event};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Config, ProcessorJob, with_processor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to rebuild: `balances` (from the postings) or `users` (from its topic).
    #[arg(value_parser = ["balances", "users"])]
    what: String,
    /// Swap the rebuilt tables in (without it: only report the differences).
    #[arg(long)]
    execute: bool,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

/// Projections rebuilt from their processor's topics, with the tables they own.
const PROJECTIONS: &[(&str, &[&str])] = &[("users", &["user_directory"])];

/// The schema that holds the shadow tables while a rebuild runs.
const SHADOW: &str = "dhanman_shadow";

#[derive(Debug, Default, Serialize)]
struct ProjectionReport {
    processor: String,
    records: usize,
    unreadable: usize,
    /// Per table: (live rows, rebuilt rows, rows that differ either way).
    tables: BTreeMap<String, (i64, i64, i64)>,
    executed: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.what == "balances" {
        return rebuild_balances(&args).await;
    }
    let tables = PROJECTIONS
        .iter()
        .find(|(name, _)| *name == args.what)
        .map(|(_, tables)| *tables)
        .with_context(|| format!("{} is not a projection that can be rebuilt", args.what))?;
    let job = Shadow {
        config: &args.config,
        tables,
        execute: args.execute,
        json: args.json,
    };
    with_processor(&args.what, &args.config, job).await
}

async fn rebuild_balances(args: &Args) -> anyhow::Result<()> {
    let pool = args.config.pool().await?;
    let report = balances::rebuild(&pool, args.execute)
        .await
        .context("rebuilding the balances")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "rebuilt from the postings: {} account balance rows, {} party balance rows",
        report.account_rows, report.party_rows
    );
    println!(
        "differing from the live tables: {} account rows, {} party rows",
        report.account_differences, report.party_differences
    );
    for sample in &report.samples {
        println!("  {sample}");
    }
    print_outcome(report.executed);
    Ok(())
}

fn print_outcome(executed: bool) {
    if executed {
        println!("swapped in: the live tables now hold the rebuilt rows");
    } else {
        println!("dry run: nothing changed; add --execute to swap the rebuilt rows in");
    }
}

struct Shadow<'a> {
    config: &'a Config,
    tables: &'a [&'a str],
    execute: bool,
    json: bool,
}

/// Reads each topic from `from` (per topic and partition) to its end now.
async fn read_topics(
    bootstrap: &str,
    topics: &[String],
    from: &BTreeMap<String, BTreeMap<i32, i64>>,
) -> anyhow::Result<(Vec<StoredRecord>, BTreeMap<String, BTreeMap<i32, i64>>)> {
    let mut records = Vec::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        let (bootstrap, name) = (bootstrap.to_string(), topic.clone());
        let start = from.get(topic).cloned().unwrap_or_default();
        let (read, end) =
            tokio::task::spawn_blocking(move || read_to_end(&bootstrap, &name, &start))
                .await?
                .with_context(|| format!("reading {topic}"))?;
        records.extend(read);
        ends.insert(topic.clone(), end);
    }
    Ok((records, ends))
}

/// The records as events, in order; unreadable ones counted and left out.
async fn decode(codec: &Codec, records: &[StoredRecord]) -> anyhow::Result<(Vec<Event>, usize)> {
    let mut events = Vec::with_capacity(records.len());
    let mut unreadable = 0;
    for record in records {
        match codec.decode_event(&record.value).await {
            Ok(e) => events.push(e),
            Err(e) if e.is_transient() => return Err(e).context("decoding (the registry)"),
            Err(_) => unreadable += 1,
        }
    }
    Ok((events, unreadable))
}

/// Applies events to the shadow tables: the processor's SQL, with the shadow schema first
/// on the search path for this transaction.
async fn apply_to_shadow<P: Processor>(
    conn: &mut PgConnection,
    processor: &P,
    events: &[Event],
) -> anyhow::Result<()> {
    sqlx::query("select set_config('search_path', $1, true)")
        .bind(format!("{SHADOW}, public"))
        .execute(&mut *conn)
        .await?;
    let refs: Vec<&Event> = events.iter().collect();
    processor.apply(conn, &refs).await?;
    sqlx::query("select set_config('search_path', 'public', true)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl ProcessorJob for Shadow<'_> {
    async fn with<P: Processor>(self, processor: P) -> anyhow::Result<()> {
        let pool = self.config.pool().await?;
        let codec = self.config.codec()?;
        let topics = self.config.topics_of(&processor);
        prepare_shadow(&pool, self.tables).await?;
        let bootstrap = &self.config.kafka_bootstrap_servers;
        let (records, ends) = read_topics(bootstrap, &topics, &BTreeMap::new()).await?;
        let (events, unreadable) = decode(&codec, &records).await?;
        let mut tx = pool.begin().await?;
        apply_to_shadow(&mut tx, &processor, &events).await?;
        tx.commit().await?;
        let mut report = ProjectionReport {
            processor: processor.name().to_string(),
            records: records.len(),
            unreadable,
            executed: self.execute,
            ..ProjectionReport::default()
        };
        let mut tx = pool.begin().await?;
        if self.execute {
            // The live tables are locked from here to the swap; what was published since
            // the read goes into the shadow first.
            for table in self.tables {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "lock table public.{table} in exclusive mode"
                )))
                .execute(&mut *tx)
                .await?;
            }
            let (more, _) = read_topics(bootstrap, &topics, &ends).await?;
            let (late, late_unreadable) = decode(&codec, &more).await?;
            apply_to_shadow(&mut tx, &processor, &late).await?;
            report.records += more.len();
            report.unreadable += late_unreadable;
        }
        for table in self.tables {
            report
                .tables
                .insert(table.to_string(), compare(&mut tx, table).await?);
        }
        if self.execute {
            for table in self.tables {
                for sql in [
                    format!("delete from public.{table}"),
                    format!("insert into public.{table} select * from {SHADOW}.{table}"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("drop schema {SHADOW} cascade")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "rebuilt {} from {} records ({} unreadable)",
                report.processor, report.records, report.unreadable
            );
            for (table, (live, rebuilt, differ)) in &report.tables {
                println!("  {table}: {live} live rows, {rebuilt} rebuilt, {differ} differ");
            }
            print_outcome(report.executed);
        }
        Ok(())
    }
}

/// Empty copies of the projection's tables in the shadow schema. Table names are the
/// constants of [`PROJECTIONS`], never input.
async fn prepare_shadow(pool: &PgPool, tables: &[&str]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop schema if exists {SHADOW} cascade"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create schema {SHADOW}")))
        .execute(&mut *tx)
        .await?;
    for table in tables {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create table {SHADOW}.{table} (like public.{table} including all)"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// (live rows, rebuilt rows, rows in one and not the other), ignoring `updated_at`.
async fn compare(conn: &mut PgConnection, table: &str) -> anyhow::Result<(i64, i64, i64)> {
    let row =
        |schema: &str| format!("select to_jsonb(t) - 'updated_at' as r from {schema}.{table} t");
    let (live, shadow) = (row("public"), row(SHADOW));
    let sql = format!(
        "select (select count(*) from public.{table}), (select count(*) from {SHADOW}.{table}),
                (select count(*) from (({live}) except ({shadow})) a)
              + (select count(*) from (({shadow}) except ({live})) b)"
    );
    let counts = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await?;
    Ok(counts)
}
