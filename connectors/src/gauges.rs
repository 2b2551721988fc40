//! Gauges of the pipeline's queues, sampled by one of the processes that serve `/metrics`
//! (the API processes, one at a time): the outbox (rows the relay has yet to publish, and how long the oldest has
//! waited) and the dead-letter topics (records in each, from the broker's watermarks).

use std::time::Duration;

use rdkafka::consumer::Consumer;
use sqlx::PgPool;

use crate::Result;
use crate::kafka::Probe;
use crate::leader::{self, Leadership};

/// Gauge: outbox rows not yet published (parked rows left out).
pub const OUTBOX_DEPTH: &str = "dhanman_outbox_depth";
/// Gauge: outbox rows the relay parked as unpublishable (see `dhanman outbox parked`).
pub const OUTBOX_PARKED: &str = "dhanman_outbox_parked";
/// Gauge: seconds the oldest unpublished outbox row has waited; 0 when none waits.
pub const OUTBOX_OLDEST_AGE: &str = "dhanman_outbox_oldest_age_seconds";
/// Gauge, label `topic` (physical name): records in a dead-letter topic (high watermark
/// less low watermark, summed over its partitions).
pub const DLQ_SIZE: &str = "dhanman_dlq_size";
/// Gauge: 1 while this process samples the deployment's lag and queue gauges, 0 while
/// another does. A process that stopped sampling keeps exporting its last values; this
/// tells them apart.
pub const SAMPLER_ACTIVE: &str = "dhanman_sampler_active";

/// The outbox's backlog: (unpublished rows, seconds the oldest has waited); parked rows
/// are not waiting to be published and are counted by [`outbox_parked`].
pub async fn outbox_backlog(pool: &PgPool) -> Result<(i64, f64)> {
    // Both read the queue of unpublished ids; the oldest is the lowest id.
    let (depth,): (i64,) = sqlx::query_as("select count(*) from outbox_pending")
        .fetch_one(pool)
        .await?;
    let oldest: Option<(f64,)> = sqlx::query_as(
        "select greatest(extract(epoch from now() - created_at), 0)::float8
           from outbox where id = (select min(id) from outbox_pending)",
    )
    .fetch_optional(pool)
    .await?;
    Ok((depth, oldest.map_or(0.0, |(age,)| age)))
}

/// Outbox rows parked by the relay.
pub async fn outbox_parked(pool: &PgPool) -> Result<i64> {
    let (parked,): (i64,) =
        sqlx::query_as("select count(*) from outbox where parked_at is not null")
            .fetch_one(pool)
            .await?;
    Ok(parked)
}

/// Records in each topic of `topics` (physical names), from the broker's watermarks. A
/// topic the broker does not know is left out.
pub async fn topic_sizes(probe: &Probe, topics: Vec<String>) -> Result<Vec<(String, i64)>> {
    let consumer = probe.clone();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let mut sizes = Vec::with_capacity(topics.len());
        for topic in topics {
            let count = crate::kafka::partition_count(&consumer, &topic, timeout)?;
            if count == 0 {
                continue;
            }
            let mut size = 0;
            for p in 0..count {
                let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                size += (high - low).max(0);
            }
            sizes.push((topic, size));
        }
        Ok(sizes)
    })
    .await
    .map_err(|e| crate::Error::Broker(format!("watermark probe failed: {e}")))?
}

/// The deployment's gauges and lag samples, every `interval`, while this process holds
/// [`leader::SAMPLER_LOCK`]: with several API processes one samples, and the others take
/// over when it goes. Runs until the task is dropped.
/// `scope` is the lag sample's (its topic prefix names the dead-letter topics too).
pub async fn run_samplers(
    pool: PgPool,
    probe: Probe,
    scope: crate::lag::Scope,
    interval: Duration,
) {
    let dlq_topics: Vec<String> = dhanman_schemas::topics::ALL
        .iter()
        .map(|t| format!("{}{}", scope.topic_prefix, dhanman_schemas::topics::dlq(t)))
        .collect();
    let mut said_waiting = false;
    loop {
        metrics::gauge!(SAMPLER_ACTIVE).set(0.0);
        let mut leadership = match Leadership::try_acquire(&pool, leader::SAMPLER_LOCK).await {
            Ok(Some(leadership)) => leadership,
            Ok(None) => {
                if !said_waiting {
                    tracing::info!(
                        "another process samples lag and the queue gauges; this one takes over if it goes"
                    );
                    said_waiting = true;
                }
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the sampler lock");
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        said_waiting = false;
        metrics::gauge!(SAMPLER_ACTIVE).set(1.0);
        tracing::info!("this process samples lag and the queue gauges for the deployment");
        loop {
            // Side by side: a slow lag sample (it reads the oldest waiting record of each
            // lagging partition) must not hold the queue gauges back.
            tokio::join!(
                crate::lag::sample(&pool, &probe, &scope),
                sample(&pool, &probe, &dlq_topics)
            );
            tokio::time::sleep(interval).await;
            if let Err(e) = leadership.check().await {
                tracing::warn!(error = %e, "lost the sampler lock");
                break;
            }
        }
        leadership.release().await;
    }
}

/// Sets the outbox and dead-letter gauges; a failed sample is logged and leaves the
/// previous values.
async fn sample(pool: &PgPool, probe: &Probe, dlq_topics: &[String]) {
    match outbox_backlog(pool).await {
        Ok((depth, age)) => {
            metrics::gauge!(OUTBOX_DEPTH).set(depth as f64);
            metrics::gauge!(OUTBOX_OLDEST_AGE).set(age);
        }
        Err(e) => tracing::warn!(error = %e, "outbox sample failed"),
    }
    match outbox_parked(pool).await {
        Ok(parked) => metrics::gauge!(OUTBOX_PARKED).set(parked as f64),
        Err(e) => tracing::warn!(error = %e, "parked outbox sample failed"),
    }
    match topic_sizes(probe, dlq_topics.to_vec()).await {
        Ok(sizes) => {
            for (topic, size) in sizes {
                metrics::gauge!(DLQ_SIZE, "topic" => topic).set(size as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "dead-letter topic sample failed"),
    }
}
