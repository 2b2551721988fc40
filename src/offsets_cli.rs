//! `dhanman offsets show|reset`: a processor group's offsets, shown or moved like
//! `kafka-consumer-groups --reset-offsets`. The plan is printed first; nothing moves
//! without `--execute`, and nothing moves while the group has a live member.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dhanman_connectors::offsets::{self, PlanRow, Target, TopicSpec};
use dhanman_processors::runtime::MEMBER_TIMEOUT;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Where the group is on each partition, against the log's start and end.
    Show(Common),
    /// Moves the group: prints the plan, and carries it out with `--execute`.
    Reset(ResetArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The consumer group, e.g. `dhanman.ledger`.
    #[arg(long)]
    group: String,
    /// `topic` or `topic:0,1`; repeatable. Default: every topic the group has offsets for.
    #[arg(long = "topic")]
    topics: Vec<TopicSpec>,
    /// JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connections: crate::Connections,
}

#[derive(Debug, clap::Args)]
#[group(id = "target", required = true, multiple = false)]
struct TargetArgs {
    /// The start of each partition's log.
    #[arg(long, group = "target")]
    to_earliest: bool,
    /// The end of each partition's log (skip everything waiting).
    #[arg(long, group = "target")]
    to_latest: bool,
    /// This offset on every partition (clamped to the log).
    #[arg(long, group = "target")]
    to_offset: Option<i64>,
    /// Forward (positive) or back (negative) by this many records.
    #[arg(long, group = "target", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// The first record at or after this time (RFC 3339).
    #[arg(long, group = "target")]
    to_datetime: Option<DateTime<Utc>>,
    /// The first record at or after this long ago (e.g. `90m`, `2h`, `1day`).
    #[arg(long, group = "target", value_parser = humantime::parse_duration)]
    by_duration: Option<std::time::Duration>,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(if self.to_earliest {
            Target::Earliest
        } else if self.to_latest {
            Target::Latest
        } else if let Some(o) = self.to_offset {
            Target::Offset(o)
        } else if let Some(n) = self.shift_by {
            Target::ShiftBy(n)
        } else if let Some(at) = self.to_datetime {
            Target::Datetime(at)
        } else if let Some(ago) = self.by_duration {
            Target::Datetime(Utc::now() - chrono::Duration::from_std(ago)?)
        } else {
            bail!("name where to move the group")
        })
    }
}

#[derive(Debug, clap::Args)]
struct ResetArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    target: TargetArgs,
    /// Carry the plan out (without it, only the plan is printed).
    #[arg(long)]
    execute: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (common, target, execute) = match args.command {
        Command::Show(common) => (common, None, false),
        Command::Reset(reset) => {
            let target = reset.target.target()?;
            (reset.common, Some(target), reset.execute)
        }
    };
    let pool = common.connections.pool().await?;
    let bootstrap = &common.connections.kafka_bootstrap_servers;
    let rows = offsets::plan(&pool, bootstrap, &common.group, &common.topics, target)
        .await
        .context("planning (KAFKA_BOOTSTRAP_SERVERS)")?;
    if rows.is_empty() {
        bail!(
            "group {} has no stored offsets; name its topics with --topic",
            common.group
        );
    }
    let live = offsets::live_members(&pool, &common.group, MEMBER_TIMEOUT).await?;
    if common.json {
        let report = serde_json::json!({
            "group": common.group, "partitions": rows, "live_members": live,
            "executed": execute && live.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&rows, target.is_some()));
        print!("{}", members(&live));
    }
    let Some(_) = target else { return Ok(()) };
    if !live.is_empty() {
        let who: Vec<String> = live
            .iter()
            .map(|m| format!("{} (pid {}, seen {})", m.host, m.pid, m.last_seen))
            .collect();
        bail!(
            "group {} has {} live member(s): {}; stop them first (a running member carries on \
             from where it is)",
            common.group,
            live.len(),
            who.join(", ")
        );
    }
    if !execute {
        eprintln!("dry run: nothing moved; add --execute to move the group as planned");
        return Ok(());
    }
    offsets::execute(&pool, bootstrap, &common.group, &rows)
        .await
        .context("moving the group's offsets")?;
    eprintln!(
        "moved group {} on {} partition(s), in Postgres and in Kafka",
        common.group,
        rows.len()
    );
    Ok(())
}

fn table(rows: &[PlanRow], reset: bool) -> String {
    let mut out = format!(
        "{:<40} {:>4} {:>10} {:>10} {:>10} {:>8}{}\n",
        "TOPIC",
        "PART",
        "CURRENT",
        "LOG-START",
        "LOG-END",
        "LAG",
        if reset { "     NEW-OFFSET  MOVE" } else { "" }
    );
    for r in rows {
        let current = r.current.map_or_else(|| "-".to_string(), |c| c.to_string());
        let lag = r.log_end - r.current.unwrap_or(r.log_start);
        out.push_str(&format!(
            "{:<40} {:>4} {:>10} {:>10} {:>10} {:>8}",
            r.topic, r.partition, current, r.log_start, r.log_end, lag
        ));
        if reset {
            let moved = r.target - r.current.unwrap_or(r.log_start);
            out.push_str(&format!(" {:>14} {:>+5}", r.target, moved));
        }
        out.push('\n');
    }
    out
}

/// The live members and what each holds, under the table.
fn members(live: &[offsets::LiveMember]) -> String {
    if live.is_empty() {
        return "no live members\n".to_string();
    }
    let mut out = format!("{} live member(s):\n", live.len());
    for m in live {
        let holds = match &m.partitions {
            Some(p) if p.is_empty() => "nothing".to_string(),
            Some(p) => p.join(" "),
            None => "(not reported)".to_string(),
        };
        out.push_str(&format!(
            "  {} pid {} seen {} holds {holds}\n",
            m.host,
            m.pid,
            m.last_seen.format("%H:%M:%S")
        ));
    }
    out
}
