//! What the binary and the operations commands both do to start: apply the migrations,
//! create the topics, register the local schemas, build a processor, stop on a signal,
//! serve the metrics of a part that has no API.

use std::time::Duration;

use anyhow::Context;
use dhanman_processors::{Stop, Stopper, catalog};
use dhanman_schemas::topics;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::Config;

/// The migrations of every part, applied by `dhanman migrate` and by tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Registers every local schema version (oldest first) in the embedded registry, under the
/// subjects of the installation's topics: the registry the API serves then holds what the
/// relay and the processors read and write, so they need no credentials to change it. A
/// local schema the registry refuses (an incompatible change) stops the start.
pub async fn register_local_schemas(pool: &PgPool, topic_prefix: &str) -> anyhow::Result<()> {
    let registry = dhanman_registry::Registry::new(pool.clone());
    let mut records: Vec<_> = dhanman_schemas::Catalog::global().all().collect();
    records.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    for record in records {
        let subject = topics::subject(&format!("{topic_prefix}{}", record.topic), &record.name);
        let parsed = dhanman_registry::ParsedSchema::parse(record.text)
            .with_context(|| format!("{} v{}", record.name, record.version))?;
        registry
            .register_schema(&subject, &parsed, Default::default())
            .await
            .with_context(|| {
                format!(
                    "registering {} v{} under {subject} in the embedded registry",
                    record.name, record.version
                )
            })?;
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}

/// Every topic the pipeline owns, with its dead-letter topic.
pub fn all_topics(prefix: &str) -> Vec<String> {
    topics::ALL
        .iter()
        .flat_map(|t| {
            [
                format!("{prefix}{t}"),
                format!("{prefix}{}", topics::dlq(t)),
            ]
        })
        .collect()
}

pub async fn ensure_topics(config: &Config) -> anyhow::Result<()> {
    reach_broker(&config.kafka_bootstrap_servers).await?;
    dhanman_connectors::kafka::ensure_replicated_topics(
        &config.kafka_bootstrap_servers,
        &all_topics(&config.topic_prefix),
        config.topic_partitions,
        config.topic_replicas,
    )
    .await
    .context("creating topics (KAFKA_BOOTSTRAP_SERVERS)")
}

/// How long a start waits for the broker to answer before it gives up.
const BROKER_WAIT: Duration = Duration::from_secs(60);

/// Waits until the broker answers a metadata request, saying every few seconds what it is
/// waiting for and why (a broker still starting, a wrong address), and fails after
/// [`BROKER_WAIT`] naming the address and the setting, instead of a silent minute and a
/// bare time-out from the topics' creation.
async fn reach_broker(bootstrap: &str) -> anyhow::Result<()> {
    let probe = dhanman_connectors::kafka::probe(bootstrap).with_context(|| {
        format!(
            "the broker's address {bootstrap:?} ({})",
            crate::KAFKA_BOOTSTRAP_SERVERS.names()
        )
    })?;
    let started = std::time::Instant::now();
    loop {
        let attempt = std::time::Instant::now();
        let client = probe.clone();
        let answer = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            client
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ())
        })
        .await?;
        let Err(e) = answer else { return Ok(()) };
        if started.elapsed() >= BROKER_WAIT {
            anyhow::bail!(
                "the broker at {bootstrap} ({}) did not answer within {BROKER_WAIT:?}: {e}",
                crate::KAFKA_BOOTSTRAP_SERVERS.names()
            );
        }
        tracing::warn!(%bootstrap, error = %e, "waiting for the broker");
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(attempt.elapsed())).await;
    }
}

pub async fn bind_api(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| {
            format!(
                "binding the API to {} (DHANMAN_HTTP_ADDR)",
                config.http_addr
            )
        })
}

/// How long a stopping process waits for its parts to finish what they hold.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A stop for the process: SIGTERM or SIGINT (Ctrl-C) asks its parts to stop; a second
/// signal ends the process at once.
pub fn stop_on_signals() -> anyhow::Result<Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stopper = Stopper::default();
    let stop = stopper.signal();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping: finishing what is in hand (a second signal ends the process now)"
        );
        stopper.stop();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: ending the process now");
        std::process::exit(130);
    });
    Ok(stop)
}

/// Something done with a processor, whatever its type: running it live, replaying it.
pub trait ProcessorJob {
    fn with<P: dhanman_processors::Processor>(
        self,
        processor: P,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Builds the processor `name` and hands it to `job`.
pub async fn with_processor<J: ProcessorJob>(
    name: &str,
    config: &Config,
    job: J,
) -> anyhow::Result<()> {
    let spec = catalog::find(name)?;
    if spec.name == "ledger" {
        // Rules naming an account the chart lacks stop the start, not the first batch.
        config.ledger_accounts().await?;
    }
    job.with((spec.build)(&config.processor_settings())).await
}

/// Binds the metrics listener if `DHANMAN_METRICS_ADDR` is set. Binding first, before the
/// part starts, makes a taken port an error at start-up rather than a silent gap.
pub async fn bind_metrics(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.metrics_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics listener to {addr} (DHANMAN_METRICS_ADDR)")
    })?;
    // Installed before the part runs, so nothing it records is lost.
    dhanman_api::prometheus::install();
    Ok(Some(listener))
}

/// Runs `part`, serving the metrics listener (if any) beside it; returns when the part
/// stops or the listener fails.
pub async fn with_metrics(
    listener: Option<TcpListener>,
    part: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let Some(listener) = listener else {
        return part.await;
    };
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    tokio::select! {
        result = part => result,
        served = dhanman_api::prometheus::serve(listener) => {
            served.context("serving /metrics (DHANMAN_METRICS_ADDR)")?;
            anyhow::bail!("the metrics listener stopped")
        }
    }
}
