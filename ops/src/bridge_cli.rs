//! `dhanman bridge rabbitmq`: the bridge between the .NET services' RabbitMQ and the
//! pipeline, for a society moving its services over one at a time (see docs/bridge.md).

use anyhow::Context;
use dhanman_connectors::rabbitmq::{self, Settings, StopSignal};
use uuid::Uuid;

use crate::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// RabbitMQ's events and commands into the pipeline, and our events back to RabbitMQ.
    Rabbitmq(Box<RabbitArgs>),
}

/// Which directions the bridge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    Both,
    Inbound,
    Outbound,
}

#[derive(Debug, clap::Args)]
struct RabbitArgs {
    /// The RabbitMQ the .NET services use.
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true)]
    rabbitmq_url: String,
    /// The society whose services publish there: messages are applied in it, and only its
    /// events are published.
    #[arg(long, env = "DHANMAN_BRIDGE_ORGANIZATION_ID")]
    organization_id: Uuid,
    /// `both`, `inbound` (RabbitMQ into the pipeline) or `outbound` (our events out).
    #[arg(
        long,
        env = "DHANMAN_BRIDGE_DIRECTION",
        value_enum,
        default_value = "both"
    )]
    direction: Direction,
    /// The fan-out exchange of the .NET services' domain events.
    #[arg(
        long,
        env = "DHANMAN_RABBITMQ_EVENTS_EXCHANGE",
        default_value = "dhanman.events"
    )]
    events_exchange: String,
    /// The direct exchange of their commands.
    #[arg(
        long,
        env = "DHANMAN_RABBITMQ_COMMANDS_EXCHANGE",
        default_value = "dhanman.commands"
    )]
    commands_exchange: String,
    /// The routing key of the commands the bridge takes.
    #[arg(
        long,
        env = "DHANMAN_RABBITMQ_COMMANDS_ROUTING_KEY",
        default_value = "notification.commands"
    )]
    commands_routing_key: String,
    /// The bridge's queues: `<prefix>.events`, `<prefix>.commands`, `<prefix>.dead-letters`.
    #[arg(
        long,
        env = "DHANMAN_RABBITMQ_QUEUE_PREFIX",
        default_value = "dhanman-stream.bridge"
    )]
    queue_prefix: String,
    /// The fan-out exchange of messages the bridge cannot map or apply.
    #[arg(
        long,
        env = "DHANMAN_RABBITMQ_DEAD_LETTER_EXCHANGE",
        default_value = "dhanman-stream.bridge.dead-letters"
    )]
    dead_letter_exchange: String,
    /// Unacknowledged messages RabbitMQ hands the bridge at once.
    #[arg(long, env = "DHANMAN_RABBITMQ_PREFETCH", default_value_t = 500)]
    prefetch: u16,
    #[command(flatten)]
    config: Config,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Rabbitmq(args) = args.command;
    let RabbitArgs {
        rabbitmq_url,
        organization_id,
        direction,
        events_exchange,
        commands_exchange,
        commands_routing_key,
        queue_prefix,
        dead_letter_exchange,
        prefetch,
        config,
    } = *args;
    let metrics = crate::bind_metrics(&config).await?;
    let pool = config.pool().await?;
    let found: Option<(Uuid,)> = sqlx::query_as("select id from organizations where id = $1")
        .bind(organization_id)
        .fetch_optional(&pool)
        .await
        .context("looking up DHANMAN_BRIDGE_ORGANIZATION_ID")?;
    anyhow::ensure!(
        found.is_some(),
        "organization {organization_id} (DHANMAN_BRIDGE_ORGANIZATION_ID) does not exist"
    );
    let settings = Settings {
        url: rabbitmq_url,
        organization_id,
        events_exchange,
        commands_exchange,
        commands_routing_key,
        queue_prefix,
        dead_letter_exchange,
        prefetch: prefetch.max(1),
        batch_size: config.batch_size.max(1),
        policy: dhanman_producers::purchase::ApprovalPolicy {
            cfo_threshold: config.po_cfo_threshold,
        },
        kafka_bootstrap: config.kafka_bootstrap_servers.to_string(),
        topic_prefix: config.topic_prefix.clone(),
        group_id: format!("{}dhanman.rabbitmq-bridge", config.topic_prefix),
    };
    let stop = StopSignal::new(crate::stop_on_signals()?.into_requested());
    // Each side runs until the stop is asked for. One that panics (a defect some message
    // brings out) ends the bridge at once, the other side with it, so that the service
    // manager starts it again: never one side down behind a process that looks alive.
    let mut sides = tokio::task::JoinSet::new();
    if direction != Direction::Outbound {
        sides.spawn(rabbitmq::inbound::run(
            pool.clone(),
            settings.clone(),
            stop.clone(),
        ));
    }
    if direction != Direction::Inbound {
        crate::ensure_topics(&config).await?;
        let codec = config.codec()?;
        sides.spawn(rabbitmq::outbound::run(
            pool.clone(),
            codec,
            settings.clone(),
            stop.clone(),
        ));
    }
    let bridge = async move {
        while let Some(ended) = sides.join_next().await {
            ended.context("a side of the bridge panicked")?;
        }
        tracing::info!("RabbitMQ bridge stopped");
        Ok(())
    };
    crate::with_metrics(metrics, bridge).await
}
