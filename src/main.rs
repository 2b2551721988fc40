use anyhow::Context;
use clap::{Parser, Subcommand};
use dhanman::{Config, bench, demo, jobs_cli, schemas_cli};

/// dhanman-stream: the event backbone of a housing-society ERP.
#[derive(Debug, Parser)]
#[command(name = "dhanman", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API, outbox relay and every processor in one process.
    Up(Config),
    /// Only the HTTP API (and the embedded schema registry).
    Api(Config),
    /// Only the outbox relay.
    Relay(Config),
    /// One processor; run several for more throughput (same consumer group).
    Process {
        /// Processor name: ledger.
        name: String,
        #[command(flatten)]
        config: Config,
    },
    /// Apply database migrations.
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Organizations (housing societies).
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Runs the pipeline with a small society: residents, invoices, payments, balances.
    Demo(Config),
    /// Measures raw limits and the pipeline's throughput.
    Bench(bench::Args),
    /// The local Avro schemas against a schema registry: check, register, list. Exit code 0
    /// compatible, 1 a break, 2 an error.
    Schemas(schemas_cli::Args),
    /// A payment gateway for development and tests: charges, refunds and fault switches
    /// (latency, errors, hangs, lost responses). State is in memory; a restart forgets it.
    Gateway(dhanman_gateway::Args),
    /// Scheduled jobs, run now: `jobs run monthly-invoices --period YYYY-MM`. Exit code 0
    /// done (see `failures`), 1 every customer failed or the run could not finish.
    Jobs(jobs_cli::Args),
}

#[derive(Debug, Subcommand)]
enum OrgsCommand {
    /// Creates an organization; prints JSON with its id and an admin API key.
    Create {
        #[arg(long)]
        name: String,
        /// Email of the organization's first administrator, who owns the key.
        #[arg(long)]
        admin_email: Option<String>,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo, the benchmark and `schemas` print results; their logs stay quiet unless asked for.
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Bench(_) | Command::Schemas(_)
    );
    dhanman::init_telemetry(if quiet {
        "warn"
    } else {
        "info,rdkafka=warn,sqlx=warn"
    });
    // Its own exit codes: CI tells a breaking schema (1) from a failed check (2).
    let command = match cli.command {
        Command::Schemas(args) => return schemas_cli::run(args).await,
        Command::Jobs(args) => return jobs_cli::run(args).await,
        command => command,
    };
    match run(Cli { command }).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(database_url: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::PgPool::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(config) => {
            config.monthly_schedule()?;
            let pool = config.pool().await?;
            dhanman::migrate(&pool).await?;
            dhanman::ensure_topics(&config).await?;
            let listener = dhanman::bind_api(&config).await?;
            dhanman::run_all(&config, listener, pool).await
        }
        Command::Api(config) => {
            let pool = config.pool().await?;
            let listener = dhanman::bind_api(&config).await?;
            dhanman::run_api(&config, listener, pool).await
        }
        Command::Relay(config) => {
            let pool = config.pool().await?;
            dhanman::ensure_topics(&config).await?;
            dhanman::run_relay(&config, pool).await
        }
        Command::Process { name, config } => {
            if !dhanman::PROCESSORS.contains(&name.as_str()) {
                anyhow::bail!(
                    "unknown processor {name:?}; known: {}",
                    dhanman::PROCESSORS.join(", ")
                );
            }
            let pool = config.pool().await?;
            dhanman::ensure_topics(&config).await?;
            dhanman::run_processor(&config, &name, pool).await
        }
        Command::Migrate { database_url } => {
            let pool = connect(&database_url).await?;
            dhanman::migrate(&pool).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Orgs {
            command:
                OrgsCommand::Create {
                    name,
                    admin_email,
                    database_url,
                },
        } => {
            let pool = connect(&database_url).await?;
            let created =
                dhanman_producers::orgs::create_organization(&pool, &name, admin_email.as_deref())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&created)?);
            Ok(())
        }
        Command::Demo(config) => demo::run(&config).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Gateway(args) => dhanman_gateway::run(args)
            .await
            .context("running the payment gateway"),
        Command::Schemas(_) | Command::Jobs(_) => unreachable!("handled in main"),
    }
}
