//! `dhanman rebuild balances`: the materialized balances recomputed from the immutable
//! postings into shadow tables; without `--execute` a report of what differs, with it the
//! rebuilt tables swapped in atomically while the pipeline runs.

use anyhow::Context;
use dhanman_processors::balances;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to rebuild: `balances` (account and party balances, from the postings).
    #[arg(value_parser = ["balances"])]
    what: String,
    /// Swap the rebuilt tables in (without it: only report the differences).
    #[arg(long)]
    execute: bool,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&args.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
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
    if report.executed {
        println!("swapped in: the live balances are now the rebuilt ones");
    } else {
        println!("dry run: nothing changed; add --execute to swap the rebuilt balances in");
    }
    Ok(())
}
