//! `dhanman bench scaling`: the pipeline path at several sizes (default 10k, 100k and 1M
//! events), each on a stage of its own, its rate, raw limits and this process's peak memory
//! printed together, so growth with size (of time per event, of memory) shows.

use serde::Serialize;

use super::common::{Common, Report, Row};
use super::pipeline::{self, Shape};

#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The sizes, in events.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    #[command(flatten)]
    pub shape: Shape,
}

#[derive(Serialize)]
struct Size {
    events: usize,
    pipeline_per_s: f64,
    raw_consume_per_s: f64,
    raw_copy_per_s: f64,
    ratio_to_limit: f64,
    peak_rss_bytes: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut sizes = Vec::new();
    for &events in &args.sizes {
        pipeline::status(&args.common, format!("scaling: {events} events ..."));
        let m = pipeline::measure_once(&args.common, &args.shape, events).await?;
        sizes.push(Size {
            events: m.events,
            pipeline_per_s: m.pipeline_per_s,
            raw_consume_per_s: m.raw_consume_per_s,
            raw_copy_per_s: m.raw_copy_per_s,
            ratio_to_limit: m.ratio_to_limit(),
            peak_rss_bytes: m.processor_peak_rss_bytes,
        });
    }
    let mut r = Report::new(
        "scaling",
        format!("the pipeline path at {} sizes", sizes.len()),
    );
    for s in &sizes {
        r.rows.push(
            Row::new(format!("{} events", s.events), s.pipeline_per_s, "events/s")
                .against("lower raw limit", s.raw_consume_per_s.min(s.raw_copy_per_s)),
        );
        r.rows.push(Row::new(
            format!("{} events, peak RSS of the processor", s.events),
            s.peak_rss_bytes as f64 / 1048576.0,
            "MiB",
        ));
    }
    r.notes = vec!["peak RSS is the ledger processor's (`dhanman process ledger`, a child process started for each size)".into()];
    r.field("sizes", &sizes);
    r.print(args.common.json);
    Ok(())
}
