//! `dhanman jobs run <job>`: scheduled work run by hand or by cron.
//!
//! Exit codes: 0 the run finished (some customers may have failed: see `failures`), 1 every
//! customer the run tried failed, or the run itself could not finish; 2 usage (clap).

use std::process::ExitCode;

use anyhow::Context;
use dhanman_producers::monthly;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs one job now; prints a JSON summary on stdout.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Job {
    /// One invoice per active customer with a monthly charge, once per period.
    MonthlyInvoices,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    job: Job,
    /// The billing month, YYYY-MM.
    #[arg(long, value_parser = parse_period)]
    period: String,
    /// Only this organization; every organization when omitted.
    #[arg(long)]
    organization: Option<Uuid>,
    /// Days from the issue date (the first of the period) to the due date.
    #[arg(long, env = "DHANMAN_MONTHLY_DUE_DAYS", default_value_t = 10)]
    due_days: u32,
    #[command(flatten)]
    database_url: crate::DatabaseUrl,
}

fn parse_period(s: &str) -> Result<String, String> {
    dhanman_schemas::events::check_period("period", s)
        .map(|()| s.to_string())
        .map_err(|e| e.message)
}

pub async fn run(args: Args) -> ExitCode {
    let Command::Run(args) = args.command;
    match run_job(&args).await {
        Ok(summary) => {
            let json = serde_json::to_string(&summary).unwrap_or_default();
            tracing::info!(job = ?args.job, summary = %json, "job finished");
            println!("{json}");
            if summary.failed > 0 && summary.created == 0 && summary.skipped == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_job(args: &RunArgs) -> anyhow::Result<monthly::Summary> {
    let pool = args.database_url.pool().await?;
    match args.job {
        Job::MonthlyInvoices => monthly::run(&pool, &args.period, args.organization, args.due_days)
            .await
            .context("running monthly-invoices"),
    }
}
