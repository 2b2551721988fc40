//! The `dhanman` binary's wiring: each part of the pipeline started with its settings and
//! run until it is asked to stop. `main.rs` only parses arguments and calls in here or into
//! the operations commands of `dhanman-ops`.

pub mod telemetry;

use std::sync::Arc;

use anyhow::Context;
use dhanman_connectors::relay::Relay;
use dhanman_ops::{Config, ProcessorJob, STOP_TIMEOUT, register_local_schemas, with_processor};
use dhanman_processors::catalog;
use dhanman_processors::runtime::AbortOnDrop;
use dhanman_processors::{Runtime, Stop, Stopper};
use sqlx::PgPool;

/// Processors `dhanman process <name>` can run ([`catalog::PROCESSORS`]).
pub const PROCESSORS: &[&str] = &catalog::NAMES;

pub use telemetry::init_telemetry;

pub async fn run_api(
    config: &Config,
    listener: tokio::net::TcpListener,
    pool: PgPool,
    stop: Stop,
) -> anyhow::Result<()> {
    dhanman_api::prometheus::install();
    if config.embedded_registry() {
        register_local_schemas(&pool, &config.topic_prefix).await?;
    }
    let payments = config.payments(pool.clone())?;
    // Unfinished payment sagas are finished or compensated before new payments are taken.
    let resumed = payments
        .recover(None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("recovering unfinished payment sagas")?;
    tracing::info!(resumed, "payment saga recovery done");
    let _recovery = AbortOnDrop(tokio::spawn(payments.clone().run_recovery()));
    // Lag (for `/metrics` and `GET /v1/lag`), outbox backlog and dead-letter topic sizes,
    // sampled by one API process of the deployment at a time.
    let probe = dhanman_connectors::kafka::probe(&config.kafka_bootstrap_servers)?;
    let _samplers = AbortOnDrop(tokio::spawn(dhanman_connectors::gauges::run_samplers(
        pool.clone(),
        probe,
        config.lag.scope(&config.topic_prefix, None),
        config.lag_interval_ms.get(),
    )));
    // The ledger audit, in every API process (it only reads): its gauge, and a line of
    // `/readyz` from its latest report.
    let audit_report = Arc::new(tokio::sync::RwLock::new(None));
    let _audit = AbortOnDrop(tokio::spawn(dhanman_processors::audit::run_periodically(
        pool.clone(),
        config.audit_interval_ms.get(),
        audit_report.clone(),
    )));
    telemetry::register_api_metrics(&payments);
    let mut state = config.app_state(pool);
    state.payments = Some(payments);
    state.ledger_audit = Some(Arc::new(dhanman_processors::audit::readiness_probe(
        audit_report,
    )));
    tracing::info!(addr = %listener.local_addr()?, registry = %config.registry_url(), "API listening");
    dhanman_api::serve_until(listener, state, stop.into_requested())
        .await
        .context("serving the API")
}

/// The relay until `stop`: it finishes the batch it is publishing, then releases its lock.
pub async fn run_relay(config: &Config, pool: PgPool, stop: Stop) -> anyhow::Result<()> {
    let producer = dhanman_plumbing::kafka::idempotent_producer(&config.kafka_bootstrap_servers)?;
    Relay::new(pool, producer, config.codec()?)
        .with_topic_prefix(&config.topic_prefix)
        .run_until(stop.into_requested())
        .await;
    Ok(())
}

/// The live consumer of a processor, in its group, until `stop`.
struct Live<'a> {
    config: &'a Config,
    pool: PgPool,
    stop: Stop,
}

impl ProcessorJob for Live<'_> {
    async fn with<P: dhanman_processors::Processor>(self, processor: P) -> anyhow::Result<()> {
        let codec = self.config.codec()?;
        let runtime = self.config.runtime_config_for(processor.name());
        Runtime::new(processor, self.pool, codec, runtime)
            .run_until(self.stop)
            .await?;
        Ok(())
    }
}

/// The work some processors do beside consuming ([`catalog::CompanionSpec`]): the
/// notifier's sender sends outside the consumer's batches; the reminders' scheduler fires
/// the timers the consumer keeps.
fn companion(
    config: &Config,
    name: &str,
    pool: &PgPool,
    stop: Stop,
) -> anyhow::Result<Option<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let Some(companion) = &catalog::find(name)?.companion else {
        return Ok(None);
    };
    let running = (companion.start)(&config.processor_settings(), pool.clone(), stop)
        .with_context(|| format!("configuring the {}", companion.name))?;
    Ok(Some(tokio::spawn(async move {
        running.await.context(companion.name)
    })))
}

/// Runs processor `name` live (with its companion, if it has one) until either stops, or
/// until `stop`, when both finish what they hold.
pub async fn run_processor(
    config: &Config,
    name: &str,
    pool: PgPool,
    stop: Stop,
) -> anyhow::Result<()> {
    let companion = companion(config, name, &pool, stop.clone())?;
    let live = Live {
        config,
        pool,
        stop: stop.clone(),
    };
    let consumer = with_processor(name, config, live);
    let Some(mut companion) = companion else {
        return consumer.await;
    };
    let joined =
        |r: Result<anyhow::Result<()>, tokio::task::JoinError>| r.unwrap_or_else(|e| Err(e.into()));
    tokio::pin!(consumer);
    tokio::select! {
        r = &mut consumer => {
            if r.is_ok() && stop.is_requested() {
                return r.and(joined(companion.await));
            }
            companion.abort();
            r
        }
        r = &mut companion => {
            let r = joined(r);
            if r.is_ok() && stop.is_requested() {
                return r.and(consumer.await);
            }
            r
        }
    }
}

/// Runs the monthly-invoices job for the current month at each time of `schedule`. Every
/// `dhanman up` with a schedule runs it; the job's claims make the invoices exactly once
/// however many run at the same time.
pub async fn run_monthly_schedule(
    schedule: cron::Schedule,
    pool: PgPool,
    due_days: u32,
) -> anyhow::Result<()> {
    use dhanman_producers::monthly;
    loop {
        let Some(next) = schedule.upcoming(chrono::Utc).next() else {
            tracing::info!("the monthly-invoices schedule has no further times");
            return std::future::pending().await;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let period = next.format("%Y-%m").to_string();
        match monthly::run(&pool, &period, None, due_days).await {
            Ok(summary) => {
                let summary = serde_json::to_string(&summary).unwrap_or_default();
                tracing::info!(job = monthly::JOB, %summary, "scheduled job finished");
            }
            // The next time tries again; what was created stays, what failed is retried.
            Err(e) => tracing::error!(job = monthly::JOB, error = %e, "scheduled job failed"),
        }
    }
}

/// API, relay, every processor and the job schedule in one process, until `stop` or until
/// a part stops on its own (an error). Either way the other parts are asked to stop and
/// given [`STOP_TIMEOUT`] to finish what they hold.
///
/// The API answers on `pool`; the rest shares a second pool of the same size and settings
/// ([`dhanman_plumbing::postgres::twin`]), so that a backlog keeping every processor's lanes
/// in transactions cannot make a request wait for a connection.
pub async fn run_all(
    config: &Config,
    listener: tokio::net::TcpListener,
    pool: PgPool,
    mut stop: Stop,
) -> anyhow::Result<()> {
    // Before any part starts: a processor registers its series at zero when it joins its
    // group, and what is recorded before the recorder exists is lost.
    dhanman_api::prometheus::install();
    let stopper = Stopper::default();
    let mut parts = tokio::task::JoinSet::new();
    let (api_pool, pool) = (pool.clone(), dhanman_plumbing::postgres::twin(&pool));
    let pools = vec![("api", api_pool.clone()), ("work", pool.clone())];
    let _pool_gauges = AbortOnDrop(tokio::spawn(telemetry::export_pool_gauges(pools)));
    if let Some(schedule) = config.monthly_schedule()? {
        let (pool, due_days, mut stop) = (pool.clone(), config.monthly_due_days, stopper.signal());
        // A run of the job is claims and transactions: stopping anywhere is safe.
        parts.spawn(async move {
            tokio::select! {
                run = run_monthly_schedule(schedule, pool, due_days) => run,
                () = stop.requested() => Ok(()),
            }
        });
    }
    {
        let (config, stop) = (config.clone(), stopper.signal());
        parts.spawn(async move { run_api(&config, listener, api_pool, stop).await });
    }
    {
        let (config, pool, stop) = (config.clone(), pool.clone(), stopper.signal());
        parts.spawn(async move { run_relay(&config, pool, stop).await });
    }
    {
        // Deletes only: stopping anywhere is safe.
        let (retention, every, mut stop) = (
            config.retention(),
            config.retention_interval,
            stopper.signal(),
        );
        let groups = PROCESSORS
            .iter()
            .map(|p| {
                let group = dhanman_processors::runtime::default_group_id(&config.topic_prefix, p);
                (p.to_string(), group)
            })
            .collect();
        let pool = pool.clone();
        parts.spawn(async move {
            tokio::select! {
                () = dhanman_connectors::retention::run_periodically(pool, retention, groups, every) => Ok(()),
                () = stop.requested() => Ok(()),
            }
        });
    }
    for name in PROCESSORS {
        let (config, pool, stop) = (config.clone(), pool.clone(), stopper.signal());
        parts.spawn(async move { run_processor(&config, name, pool, stop).await });
    }
    let first = tokio::select! {
        part = parts.join_next() => part,
        () = stop.requested() => None,
    };
    stopper.stop();
    let mut outcome = match first {
        None => Ok(()),
        Some(Ok(result)) => result.and(Err(anyhow::anyhow!("a part of the pipeline stopped"))),
        Some(Err(e)) => Err(e.into()),
    };
    let rest = async {
        while let Some(part) = parts.join_next().await {
            let result = part.map_err(anyhow::Error::from).and_then(|r| r);
            if let (Err(e), true) = (result, outcome.is_ok()) {
                outcome = Err(e);
            }
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, rest).await.is_err() {
        tracing::warn!(waited = ?STOP_TIMEOUT, "parts still running when the stop timed out; leaving them");
    }
    outcome
}
