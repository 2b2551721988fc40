// The operations commands answer on stdout and say what went wrong on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use dhanman_ops::{
    Config, DatabaseUrl, audit_cli, bench, bridge_cli, campaign, demo, dlq_cli, jobs_cli, lag_cli,
    offsets_cli, outbox_cli, rebuild_cli, registry_cli, replay_cli, schemas_cli,
};
use dhanman_processors::runtime::AbortOnDrop;

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
        #[command(flatten)]
        database_url: DatabaseUrl,
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
    /// The fault campaign: the pipeline as separate processes under load, one killed (or
    /// Postgres or the broker restarted) per round; then the books against what was
    /// acknowledged. Exit 1 when anything was lost, doubled or off.
    Campaign(campaign::Args),
    /// The local Avro schemas against a schema registry: check, register, list. Exit code 0
    /// compatible, 1 a break, 2 an error.
    Schemas(schemas_cli::Args),
    /// A payment gateway for development and tests: charges, refunds and fault switches
    /// (latency, errors, hangs, lost responses). State is in memory; a restart forgets it.
    Gateway(dhanman_devpeers::Args),
    /// Scheduled jobs, run now: `jobs run monthly-invoices --period YYYY-MM`. Exit code 0
    /// done (see `failures`), 1 every customer failed or the run could not finish.
    Jobs(jobs_cli::Args),
    /// Consumer lag per group, topic and partition, in records and seconds, with trend and
    /// time to drain; `--json`, `--watch`.
    Lag(lag_cli::Args),
    /// Audits the ledger: entries balance, the trial balance nets to zero, balances equal
    /// their postings, one entry per consumed event, receivables agree with the command
    /// side; `--json`. Exit code 0 clean, 1 violations, 2 an error.
    Audit(audit_cli::Args),
    /// A consumer group's offsets (any group on the cluster): `show`, or `reset` (plan, then
    /// `--execute`) like `kafka-consumer-groups --reset-offsets`; refused while it has members.
    Offsets(offsets_cli::Args),
    /// Re-runs a processor over a range of a topic with its own consumer; a dry run (what
    /// would change, per type) unless `--execute`. Idempotent: applied events are skipped.
    Replay(Box<replay_cli::Args>),
    /// Dead letters: `list` (counts by class), `show` (one, decoded, with headers),
    /// `redrive` (back to the source topic, each once; `--execute`).
    Dlq(Box<dlq_cli::Args>),
    /// Outbox rows the relay parked as unpublishable: `parked` (with the reason each
    /// failed), `unpark` (back in line once the cause is fixed).
    Outbox(outbox_cli::Args),
    /// The embedded schema registry's users (who may change it): `registry users
    /// add|list|revoke`.
    Registry(registry_cli::Args),
    /// Bridges the .NET services' message broker and the pipeline: `bridge rabbitmq`
    /// applies their events and commands through the outbox (each message once) and
    /// publishes our events back to them (see docs/bridge.md).
    Bridge(bridge_cli::Args),
    /// Recomputes a projection from its source into shadow tables and swaps it in:
    /// `rebuild balances` (from the postings); a report unless `--execute`.
    Rebuild(rebuild_cli::Args),
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
        #[command(flatten)]
        database_url: DatabaseUrl,
    },
}

/// The process's own allocations go to jemalloc (docs/operations.md, "Memory"): under the
/// API's load glibc's malloc took over a quarter of `dhanman up`'s CPU in locks, frees and
/// consolidation. librdkafka, in C, allocates from glibc still (see [`with_two_malloc_arenas`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    with_two_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main_async()),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The variable glibc reads, once, when a process starts: how many malloc arenas it may make.
const ARENA_MAX: &str = "MALLOC_ARENA_MAX";

/// Two of glibc's malloc arenas for what librdkafka allocates, unless `MALLOC_ARENA_MAX`
/// says otherwise (docs/operations.md, "Memory"): by default a thread that finds the arenas
/// locked makes one more, up to eight per core, and each keeps the memory freed into it.
/// glibc reads the variable only as a process starts, so a process started without it
/// starts itself again with it: the same process (id, arguments, environment besides),
/// before any thread of its own. Where that fails it runs on with glibc's default, and says
/// so.
fn with_two_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ARENA_MAX).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let (Ok(exe), Some(arg0)) = (std::env::current_exe(), args.next()) else {
        return;
    };
    let error = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(ARENA_MAX, "2")
        .exec();
    eprintln!("warning: running with glibc's default malloc arenas ({ARENA_MAX} unset): {error}");
}

async fn main_async() -> std::process::ExitCode {
    let cli = parse_cli();
    // The demo, the benchmark and `schemas` print results; their logs stay quiet unless asked for.
    let quiet = matches!(
        cli.command,
        Command::Demo(_)
            | Command::Bench(_)
            | Command::Campaign(_)
            | Command::Schemas(_)
            | Command::Lag(_)
            | Command::Audit(_)
            | Command::Offsets(_)
            | Command::Replay(_)
            | Command::Dlq(_)
            | Command::Rebuild(_)
            | Command::Outbox(_)
            | Command::Registry(_)
    );
    // apache-avro logs at error level each schema or datum it refuses, which it returns as
    // an error too: the registry's and the codec's refusals of what anyone may send would
    // flood the error log. Its refusals are reported where they are handled.
    dhanman::init_telemetry(if matches!(cli.command, Command::Demo(_)) {
        // The demo has no SMTP server to deliver to by default; it reports the queued
        // notifications at the end instead of a warning per retry.
        "warn,dhanman_processors::notifier::sender=error,apache_avro=off"
    } else if quiet {
        "warn,apache_avro=off"
    } else {
        "info,rdkafka=warn,sqlx=warn,apache_avro=off"
    });
    // Its own exit codes: CI tells a breaking schema (1) from a failed check (2).
    let command = match cli.command {
        Command::Schemas(args) => return schemas_cli::run(args).await,
        Command::Jobs(args) => return jobs_cli::run(args).await,
        Command::Audit(args) => return audit_cli::run(args).await,
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

/// The command line, or its error: one naming a flag whose value came from the environment
/// says which variable held it.
fn parse_cli() -> Cli {
    let error = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(error) => error,
    };
    let argv: Vec<String> = std::env::args().collect();
    let Some(variable) =
        dhanman_ops::refused_variable(&error, &Cli::command(), &argv, |n| std::env::var(n).ok())
    else {
        error.exit()
    };
    let text = error.render().to_string();
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    eprint!("{first}\n  (read from {variable})\n{rest}");
    std::process::exit(error.exit_code())
}

/// The gauges of a process's one pool, exported until the guard is dropped.
fn pool_gauges(name: &'static str, pool: &sqlx::PgPool) -> AbortOnDrop<()> {
    let pools = vec![(name, pool.clone())];
    AbortOnDrop(tokio::spawn(dhanman::telemetry::export_pool_gauges(pools)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(config) => {
            config.monthly_schedule()?;
            let pool = config.pool().await?;
            dhanman_ops::migrate(&pool).await?;
            dhanman_ops::ensure_topics(&config).await?;
            let listener = dhanman_ops::bind_api(&config).await?;
            dhanman::run_all(&config, listener, pool, dhanman_ops::stop_on_signals()?).await
        }
        Command::Api(config) => {
            let pool = config.pool().await?;
            let _gauges = pool_gauges("api", &pool);
            let listener = dhanman_ops::bind_api(&config).await?;
            dhanman::run_api(&config, listener, pool, dhanman_ops::stop_on_signals()?).await
        }
        Command::Relay(config) => {
            let metrics = dhanman_ops::bind_metrics(&config).await?;
            let pool = config.pool().await?;
            let _gauges = pool_gauges("work", &pool);
            dhanman_ops::ensure_topics(&config).await?;
            let relay = dhanman::run_relay(&config, pool, dhanman_ops::stop_on_signals()?);
            dhanman_ops::with_metrics(metrics, relay).await
        }
        Command::Process { name, config } => {
            if !dhanman::PROCESSORS.contains(&name.as_str()) {
                anyhow::bail!(
                    "unknown processor {name:?}; known: {}",
                    dhanman::PROCESSORS.join(", ")
                );
            }
            let metrics = dhanman_ops::bind_metrics(&config).await?;
            let pool = config.pool().await?;
            let _gauges = pool_gauges("work", &pool);
            dhanman_ops::ensure_topics(&config).await?;
            let stop = dhanman_ops::stop_on_signals()?;
            let processor = dhanman::run_processor(&config, &name, pool, stop);
            dhanman_ops::with_metrics(metrics, processor).await
        }
        Command::Migrate { database_url } => {
            let pool = database_url.pool().await?;
            dhanman_ops::migrate(&pool).await?;
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
            let pool = database_url.pool().await?;
            let created =
                dhanman_producers::orgs::create_organization(&pool, &name, admin_email.as_deref())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&created)?);
            Ok(())
        }
        Command::Demo(config) => {
            demo::run(&config, |config, listener, pool, stop| async move {
                dhanman::run_all(&config, listener, pool, stop).await
            })
            .await?;
            // The pipeline has stopped; what is left (its in-process gateway and SMTP
            // server, idle connections) needs no teardown.
            use std::io::Write;
            std::io::stdout().flush()?;
            std::process::exit(0)
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Campaign(args) => campaign::run(args).await,
        Command::Lag(args) => lag_cli::run(args).await,
        Command::Outbox(args) => outbox_cli::run(args).await,
        Command::Registry(args) => registry_cli::run(args).await,
        Command::Offsets(args) => offsets_cli::run(args).await,
        Command::Replay(args) => replay_cli::run(*args).await,
        Command::Dlq(args) => dlq_cli::run(*args).await,
        Command::Rebuild(args) => rebuild_cli::run(args).await,
        Command::Bridge(args) => bridge_cli::run(args).await,
        Command::Gateway(args) => dhanman_devpeers::run(args)
            .await
            .context("running the payment gateway"),
        Command::Schemas(_) | Command::Jobs(_) | Command::Audit(_) => {
            unreachable!("handled in main")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    use super::Cli;

    /// Read by the log set-up, not by clap.
    const OUTSIDE_CLAP: &[&str] = &["RUST_LOG", "DHANMAN_LOG_FORMAT"];

    fn walk(command: &clap::Command, visit: &mut impl FnMut(&clap::Arg)) {
        command.get_arguments().for_each(&mut *visit);
        for sub in command.get_subcommands() {
            walk(sub, visit);
        }
    }

    /// clap's own checks of the definitions (one id per argument of each command, ...).
    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// docs/configuration.md has a row for every variable any command reads, showing its
    /// default, and no row for a variable nothing reads.
    #[test]
    fn the_configuration_page_matches_the_cli() {
        let page = include_str!("../docs/configuration.md");
        let rows: BTreeMap<&str, &str> = page
            .lines()
            .filter_map(|line| {
                let (variable, rest) = line.strip_prefix("| `")?.split_once('`')?;
                let default = rest.strip_prefix(" | ")?.split(" | ").next()?;
                variable
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    .then_some((variable, default))
            })
            .collect();
        let lines: BTreeMap<&str, &str> = page
            .lines()
            .filter_map(|line| {
                let (variable, _) = line.strip_prefix("| `")?.split_once('`')?;
                Some((variable, line))
            })
            .collect();
        let mut read = BTreeSet::new();
        let mut wrong = Vec::new();
        walk(&Cli::command(), &mut |arg| {
            let Some(variable) = arg.get_env() else {
                return;
            };
            let variable = variable.to_string_lossy().into_owned();
            let Some(shown) = rows.get(variable.as_str()) else {
                wrong.push(format!("{variable} has no row"));
                return;
            };
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                let matches = if default.is_empty() {
                    shown.contains("empty")
                } else {
                    shown.contains(&format!("`{default}`"))
                };
                if !matches {
                    wrong.push(format!(
                        "{variable}: default {default:?}, the page says {shown:?}"
                    ));
                }
            }
            read.insert(variable);
        });
        // A setting read under its `DHANMAN_` name and, when that is unset, its standard
        // name: both have a row, the standard one naming the other; clap knows no default of
        // it, so the page's is checked here.
        for setting in dhanman_ops::ALIASED {
            if !read.contains(setting.name) {
                wrong.push(format!("{} is read by no command", setting.name));
                continue;
            }
            match lines.get(setting.alias) {
                Some(line) if line.contains(&format!("`{}`", setting.name)) => {}
                Some(_) => wrong.push(format!(
                    "{}: its row does not name {}",
                    setting.alias, setting.name
                )),
                None => wrong.push(format!("{} has no row", setting.alias)),
            }
            if let (Some(default), Some(shown)) = (setting.default, rows.get(setting.name))
                && !shown.contains(&format!("`{default}`"))
            {
                wrong.push(format!(
                    "{}: default {default:?}, the page says {shown:?}",
                    setting.name
                ));
            }
            read.insert(setting.alias.to_string());
        }
        for variable in rows.keys() {
            if !read.contains(*variable) && !OUTSIDE_CLAP.contains(variable) {
                wrong.push(format!("{variable} is documented and no command reads it"));
            }
        }
        assert!(wrong.is_empty(), "docs/configuration.md: {wrong:#?}");
        assert!(read.len() > 40, "{read:?}");
    }
}
