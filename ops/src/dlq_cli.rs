//! `dhanman dlq list|show|redrive`: the dead-letter topics for an operator. `list` counts
//! dead letters by error class and lists them; `show` decodes one with its headers;
//! `redrive` sends the selected ones back to their source topic, each once, after a fix
//! (the plan first; nothing is sent without `--execute`).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dhanman_connectors::dlq::{self, DeadLetter, Filter};
use dhanman_schemas::topics::{self, dlq_headers};
use serde_json::json;

use crate::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Dead letters with their class, origin and error; counts by class.
    List(Select),
    /// One dead letter decoded (when it can be), with every header.
    Show(ShowArgs),
    /// Sends the selected dead letters back to their source topic, each once.
    Redrive(RedriveArgs),
}

#[derive(Debug, clap::Args)]
struct Select {
    /// A source topic (`dhanman.sales.invoices`) or its DLQ (`...invoices.dlq`); every
    /// pipeline topic's DLQ when omitted.
    #[arg(long)]
    topic: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only this class: `undecodable`, `invalid`, `rejected`.
    #[arg(long)]
    error_class: Option<String>,
    /// JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The DLQ (or its source topic).
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
    #[arg(long)]
    offset: i64,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct RedriveArgs {
    #[command(flatten)]
    select: Select,
    /// Send them (without it: only list what would be sent).
    #[arg(long)]
    execute: bool,
}

/// The physical DLQ topic a `--topic` names.
fn dlq_topic(config: &Config, topic: &str) -> String {
    let topic = if topic.starts_with(&config.topic_prefix) {
        topic.to_string()
    } else {
        format!("{}{topic}", config.topic_prefix)
    };
    if topic.ends_with(".dlq") {
        topic
    } else {
        topics::dlq(&topic)
    }
}

async fn select(select: &Select) -> anyhow::Result<Vec<DeadLetter>> {
    let config = &select.config;
    let pool = config.pool().await?;
    let dlqs: Vec<String> = match &select.topic {
        Some(t) => vec![dlq_topic(config, t)],
        None => topics::ALL.iter().map(|t| dlq_topic(config, t)).collect(),
    };
    let filter = Filter {
        since: select.since,
        error_class: select.error_class.clone(),
    };
    let mut letters = Vec::new();
    for topic in dlqs {
        let read = dlq::read(&pool, &config.kafka_bootstrap_servers, &topic)
            .await
            .with_context(|| format!("reading {topic} (KAFKA_BOOTSTRAP_SERVERS)"))?;
        letters.extend(read.into_iter().filter(|l| filter.matches(l)));
    }
    Ok(letters)
}

fn print_list(letters: &[DeadLetter], json: bool) -> anyhow::Result<()> {
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    for l in letters {
        *by_class.entry(l.class()).or_default() += 1;
    }
    if json {
        let report = json!({"count": letters.len(), "by_class": by_class, "dead_letters": letters});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<44} {:>4} {:>7} {:<12} {:<44} {:<10} {:<20} ERROR",
        "DLQ", "PART", "OFFSET", "CLASS", "SOURCE", "PROCESSOR", "REDRIVEN"
    );
    for l in letters {
        let source = format!(
            "{}/{}/{}",
            l.source_topic().unwrap_or("?"),
            l.header(dlq_headers::SOURCE_PARTITION).unwrap_or("?"),
            l.header(dlq_headers::SOURCE_OFFSET).unwrap_or("?")
        );
        let error: String = l
            .header(dlq_headers::ERROR)
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        println!(
            "{:<44} {:>4} {:>7} {:<12} {:<44} {:<10} {:<20} {}",
            l.dlq_topic,
            l.partition,
            l.offset,
            l.class(),
            source,
            l.header(dlq_headers::PROCESSOR).unwrap_or("?"),
            l.redriven_at
                .map_or_else(|| "-".to_string(), |t| t.format("%F %T").to_string()),
            error
        );
    }
    let counts: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "\n{} dead letter(s){}{}",
        letters.len(),
        if counts.is_empty() { "" } else { ": " },
        counts.join(", ")
    );
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List(s) => print_list(&select(&s).await?, s.json),
        Command::Show(a) => show(a).await,
        Command::Redrive(a) => {
            let letters = select(&a.select).await?;
            let pending: Vec<&DeadLetter> = letters
                .iter()
                .filter(|l| l.redriven_at.is_none() && l.source_topic().is_some())
                .collect();
            let already = letters.len() - pending.len();
            if !a.execute {
                let owned: Vec<DeadLetter> = pending.iter().map(|l| (*l).clone()).collect();
                print_list(&owned, a.select.json)?;
                eprintln!(
                    "dry run: {} would be redriven ({already} already were); add --execute",
                    pending.len()
                );
                return Ok(());
            }
            let pool = a.select.config.pool().await?;
            let sent = dlq::redrive(&pool, &a.select.config.topic_prefix, &pending)
                .await
                .context("redriving")?;
            if a.select.json {
                println!("{}", json!({"redriven": sent, "already_redriven": already}));
            } else {
                println!(
                    "redriven {sent} dead letter(s) to their source topics ({already} already were)"
                );
            }
            Ok(())
        }
    }
}

async fn show(a: ShowArgs) -> anyhow::Result<()> {
    let config = &a.config;
    let pool = config.pool().await?;
    let topic = dlq_topic(config, &a.topic);
    let letters = dlq::read(&pool, &config.kafka_bootstrap_servers, &topic).await?;
    let Some(letter) = letters
        .into_iter()
        .find(|l| l.partition == a.partition && l.offset == a.offset)
    else {
        bail!(
            "{topic} has no record at partition {} offset {}",
            a.partition,
            a.offset
        );
    };
    let record = match config.codec()?.decode(&letter.value).await {
        Ok(d) => json!({"record_name": d.name, "schema_id": d.schema_id, "value": d.json}),
        Err(e) => json!({
            "undecodable": e.to_string(),
            "bytes": letter.value.len(),
            "hex_prefix": letter.value.iter().take(64).map(|b| format!("{b:02x}")).collect::<String>(),
        }),
    };
    let shown = json!({
        "dlq_topic": letter.dlq_topic, "partition": letter.partition, "offset": letter.offset,
        "timestamp": letter.timestamp, "key": dlq::key_text(letter.key.as_deref()),
        "headers": dlq::headers_text(&letter.headers),
        "redriven_at": letter.redriven_at, "record": record,
    });
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}
