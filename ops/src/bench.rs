//! `dhanman bench <path>`: one benchmark per path of the pipeline, each measuring its raw
//! limits in the same run and printing its numbers beside them (or, with `--json`, one
//! object). `dhanman bench` alone is `dhanman bench pipeline`.

mod api;
mod backlog;
mod common;
mod deployed;
mod e2e;
mod freshness;
mod load;
mod pipeline;
mod raw;
mod reminders;
mod replay;
mod scaling;

#[derive(Debug, clap::Args)]
#[group(skip)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    path: Option<Path>,
    /// Without a path: the pipeline's.
    #[command(flatten)]
    pipeline: pipeline::Args,
}

#[derive(Debug, clap::Subcommand)]
enum Path {
    /// The ledger processor over events already on the broker, against raw consume and
    /// raw COPY of the same rows into tables with the same indexes and constraints.
    Pipeline(pipeline::Args),
    /// `POST /v1/invoices` and `/v1/invoices/batch` through the API in this process, against
    /// a bare handler doing one INSERT per request.
    Api(api::Args),
    /// `dhanman up` under rising rates through its API: the highest rate whose backlog
    /// stays bounded; the books audited afterwards.
    E2e(e2e::Args),
    /// The time from an invoice's 201 until the customer's balance reflects it.
    Freshness(freshness::Args),
    /// The API's latency under a fixed load while the processors work through a backlog,
    /// against the same load with nothing behind them.
    Backlog(backlog::Args),
    /// The reminders processor over invoices and the payments naming them, against raw
    /// consume and raw COPY of the rows it writes.
    Reminders(reminders::Args),
    /// `dhanman replay --execute` over events already applied: its rate, and no balance
    /// changed.
    Replay(replay::Args),
    /// The pipeline path at several sizes: rate and peak memory of each.
    Scaling(scaling::Args),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.path {
        None => pipeline::run(args.pipeline).await,
        Some(Path::Pipeline(args)) => pipeline::run(args).await,
        Some(Path::Api(args)) => api::run(args).await,
        Some(Path::E2e(args)) => e2e::run(args).await,
        Some(Path::Freshness(args)) => freshness::run(args).await,
        Some(Path::Backlog(args)) => backlog::run(args).await,
        Some(Path::Reminders(args)) => reminders::run(args).await,
        Some(Path::Replay(args)) => replay::run(args).await,
        Some(Path::Scaling(args)) => scaling::run(args).await,
    }
}
