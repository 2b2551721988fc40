//! `dhanman outbox parked|unpark`: the outbox rows the relay set aside as unpublishable,
//! and putting them back in line once their cause is fixed.

use anyhow::{Context, bail};
use dhanman_connectors::parked;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Lists the parked rows with the reason each could not be published.
    Parked {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connections: crate::Connections,
    },
    /// Puts parked rows back in line for the relay (`--id`, repeatable, or `--all`).
    Unpark {
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        connections: crate::Connections,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Parked { json, connections } => {
            let pool = connections.pool().await?;
            let rows = parked::list(&pool).await.context("listing parked rows")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>10}  {:<36}  {:<32}  {:<20}  REASON",
                    "ID", "EVENT", "TOPIC", "PARKED"
                );
                for r in &rows {
                    println!(
                        "{:>10}  {:<36}  {:<32}  {:<20}  {}",
                        r.id,
                        r.event_id,
                        r.topic,
                        r.parked_at.format("%Y-%m-%d %H:%M:%S"),
                        r.reason
                    );
                }
                eprintln!("{} parked row(s)", rows.len());
            }
            Ok(())
        }
        Command::Unpark {
            ids,
            all,
            connections,
        } => {
            if ids.is_empty() && !all {
                bail!("name the rows with --id (repeatable), or --all");
            }
            let pool = connections.pool().await?;
            let done = parked::unpark(&pool, (!all).then_some(ids.as_slice()))
                .await
                .context("unparking")?;
            eprintln!("{done} row(s) back in line for the relay");
            Ok(())
        }
    }
}
