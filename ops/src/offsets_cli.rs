//! `dhanman offsets show|reset`: a consumer group's offsets (a processor's, from Postgres;
//! any other group's, from Kafka), shown or moved like `kafka-consumer-groups
//! --reset-offsets`, with the group's members as the broker's coordinator describes them.
//! The plan is printed first; nothing moves without `--execute`, and nothing moves while
//! the group has members.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dhanman_connectors::groups::Group;
use dhanman_connectors::offsets::{self, PlanRow, Target, TopicSpec};

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
    let plan = offsets::plan(&pool, bootstrap, &common.group, &common.topics, target)
        .await
        .context("planning (KAFKA_BOOTSTRAP_SERVERS)")?;
    if plan.partitions.is_empty() {
        bail!(
            "group {} has no committed offsets, in Postgres or in Kafka; name its topics with --topic",
            common.group
        );
    }
    let group = offsets::describe(bootstrap, &common.group)
        .await
        .context("describing the group (KAFKA_BOOTSTRAP_SERVERS)")?;
    let active = group.is_active();
    if common.json {
        let report = serde_json::json!({
            "group": common.group, "offsets_in": plan.authority, "partitions": plan.partitions,
            "state": group.state, "members": group.members,
            "executed": execute && target.is_some() && !active,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&plan.partitions, target.is_some()));
        print!("{}", members(&group));
    }
    let Some(_) = target else { return Ok(()) };
    if active {
        let who: Vec<String> = group
            .members
            .iter()
            .map(|m| format!("{} ({}, {})", m.member_id, m.client_id, m.host))
            .collect();
        bail!(
            "group {} is {} with {} member(s): {}; stop them first (a running member carries on \
             from where it is)",
            common.group,
            group.state,
            group.members.len(),
            who.join(", ")
        );
    }
    if !execute {
        eprintln!("dry run: nothing moved; add --execute to move the group as planned");
        return Ok(());
    }
    offsets::execute(&pool, bootstrap, &common.group, &plan)
        .await
        .context("moving the group's offsets")?;
    eprintln!(
        "moved group {} on {} partition(s), in {}",
        common.group,
        plan.partitions.len(),
        match plan.authority {
            offsets::Authority::Postgres => "Postgres and in Kafka",
            offsets::Authority::Kafka => "Kafka",
        }
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

/// The group's state and members, and what each holds, under the table.
fn members(group: &Group) -> String {
    let mut out = format!(
        "group {}: {}, {} member(s)\n",
        group.group,
        group.state,
        group.members.len()
    );
    for m in &group.members {
        let holds = if m.partitions.is_empty() {
            "nothing".to_string()
        } else {
            m.partitions.join(" ")
        };
        out.push_str(&format!(
            "  {} client {} host {} holds {holds}\n",
            m.member_id, m.client_id, m.host
        ));
    }
    out
}
