//! The `dhanman` binary's library: configuration, start-up of each part, and the demo and
//! benchmark commands. `main.rs` only parses arguments and calls in here.

// The operations commands (the `*_cli` modules, the demo, the benchmark and the campaign)
// print their reports: stdout is their interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod audit_cli;
pub mod bench;
pub mod bridge_cli;
pub mod campaign;
pub mod demo;
pub mod dlq_cli;
pub mod jobs_cli;
pub mod lag_cli;
pub mod offsets_cli;
pub mod outbox_cli;
pub mod rebuild_cli;
pub mod registry_cli;
pub mod replay_cli;
pub mod schemas_cli;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dhanman_connectors::relay::Relay;
use dhanman_processors::catalog;
use dhanman_processors::notifier;
use dhanman_processors::runtime::AbortOnDrop;
use dhanman_processors::{Runtime, RuntimeConfig, Stop, Stopper};
use dhanman_schemas::{Codec, topics};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The migrations of every part, applied by `dhanman migrate` and by tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Processors `dhanman process <name>` can run ([`catalog::PROCESSORS`]).
pub const PROCESSORS: &[&str] = &catalog::NAMES;

/// Settings, all from the environment (see docs/configuration.md).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka_bootstrap_servers: String,
    /// Confluent-compatible schema registry; unset means the embedded one, served by the
    /// API at `http://<DHANMAN_HTTP_ADDR>/schema-registry`.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,
    /// `user:secret` of a registry user, sent as HTTP basic auth (Confluent's
    /// `basic.auth.user.info`): the relay registers a local schema it does not find with
    /// it. Unset: look-ups only (the embedded registry has the local schemas from the
    /// API's start).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub schema_registry_user_info: Option<secrecy::SecretString>,
    /// Address the API listens on.
    #[arg(long, env = "DHANMAN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Where `dhanman relay` and `dhanman process <name>` serve `/metrics` and `/healthz`;
    /// unset: nowhere. (The API serves its own; in `dhanman up` it covers every part.)
    #[arg(long, env = "DHANMAN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Partitions of the topics the pipeline creates.
    #[arg(long, env = "DHANMAN_TOPIC_PARTITIONS", default_value_t = 4)]
    pub topic_partitions: i32,
    /// Replicas of each partition of the topics the pipeline creates (3 on a cluster of
    /// three brokers, with `min.insync.replicas` 2).
    #[arg(long, env = "DHANMAN_TOPIC_REPLICAS", default_value_t = 1)]
    pub topic_replicas: i32,
    /// Requests per second one API key may make to one API process (sustained; 0: no
    /// limit); past it, 429 with `Retry-After`.
    #[arg(long, env = "DHANMAN_API_RATE_LIMIT", default_value_t = dhanman_api::rate_limit::DEFAULT_PER_SECOND)]
    pub api_rate_limit: u32,
    /// Requests one API key may make at once above its sustained rate.
    #[arg(long, env = "DHANMAN_API_RATE_BURST", default_value_t = dhanman_api::rate_limit::DEFAULT_BURST)]
    pub api_rate_burst: u32,
    /// How long a query with `?consistent_with=` waits for the ledger, in milliseconds.
    #[arg(long, env = "DHANMAN_CONSISTENCY_WAIT_MS", default_value_t = 5000)]
    pub consistency_wait_ms: u64,
    /// Accounts the ledger's posting rules use instead of the defaults, as `key=code` pairs
    /// (`revenue=4100,bank=1010`; keys: bank, revenue, salaries_payable, salary_expense,
    /// expenses, payable, reserved_budget, commitments). Each must be in the chart of
    /// accounts. Entries posted before a change keep theirs until `dhanman replay
    /// --processor ledger --correct --execute`.
    #[arg(long, env = "DHANMAN_LEDGER_ACCOUNTS")]
    pub ledger_accounts: Option<dhanman_processors::ledger::Accounts>,
    /// Largest batch a processor applies in one transaction.
    #[arg(long, env = "DHANMAN_BATCH_SIZE", default_value_t = dhanman_processors::runtime::DEFAULT_MAX_BATCH)]
    pub batch_size: usize,
    /// Prefix of every topic name, to share a cluster between installations or tests.
    #[arg(long, env = "DHANMAN_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Concurrent transactions a processor splits each batch into, by partition.
    #[arg(long, env = "DHANMAN_LANES", default_value_t = dhanman_processors::runtime::DEFAULT_LANES)]
    pub lanes: usize,
    /// Postgres connections per process.
    #[arg(long, env = "DHANMAN_DB_POOL", default_value_t = 10)]
    pub db_pool: u32,
    /// When `dhanman up` runs the monthly-invoices job for the current month (UTC), as a
    /// cron expression with seconds (`0 0 6 1 * *`: 06:00 on the first); unset: never.
    #[arg(long, env = "DHANMAN_MONTHLY_INVOICES_CRON")]
    pub monthly_invoices_cron: Option<String>,
    /// Days from a monthly invoice's issue date to its due date.
    #[arg(long, env = "DHANMAN_MONTHLY_DUE_DAYS", default_value_t = 10)]
    pub monthly_due_days: u32,
    /// Base URL of the payment gateway the payment saga charges (`dhanman gateway`
    /// listens here by default).
    #[arg(
        long,
        env = "DHANMAN_GATEWAY_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub gateway_url: String,
    /// Limit of one gateway request, connect to last byte, in milliseconds.
    #[arg(long, env = "DHANMAN_GATEWAY_TIMEOUT_MS", default_value_t = 5000)]
    pub gateway_timeout_ms: u64,
    /// Retries of a gateway request after a transient failure (timeout, 5xx, connection
    /// lost), with exponential backoff and jitter.
    #[arg(long, env = "DHANMAN_GATEWAY_RETRIES", default_value_t = 3)]
    pub gateway_retries: usize,
    /// Delay before the first retry, in milliseconds; doubles each retry.
    #[arg(long, env = "DHANMAN_GATEWAY_BACKOFF_MS", default_value_t = 200)]
    pub gateway_backoff_ms: u64,
    /// Consecutive transient gateway failures that open the circuit breaker.
    #[arg(long, env = "DHANMAN_GATEWAY_BREAKER_THRESHOLD", default_value_t = 5)]
    pub gateway_breaker_threshold: u32,
    /// How long the open breaker fails calls fast before it lets a trial through, in ms.
    #[arg(
        long,
        env = "DHANMAN_GATEWAY_BREAKER_COOL_DOWN_MS",
        default_value_t = 30_000
    )]
    pub gateway_breaker_cool_down_ms: u64,
    /// How often unfinished payment sagas are resumed (besides at start-up), in ms.
    #[arg(
        long,
        env = "DHANMAN_PAYMENT_RECOVERY_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub payment_recovery_interval_ms: u64,
    /// Testing switch: abort the process at a payment saga crash point (`after-start`,
    /// `after-charge`, `after-complete`, `before-refund`, `after-refund`).
    #[arg(long, env = "DHANMAN_FAULT_CRASH_AT", hide = true, value_parser = dhanman_payments::CrashPoint::parse)]
    pub fault_crash_at: Option<dhanman_payments::CrashPoint>,
    /// How often the API process samples consumer lag (for `/metrics` and `GET /v1/lag`), in ms.
    #[arg(long, env = "DHANMAN_LAG_INTERVAL_MS", default_value_t = 5000)]
    pub lag_interval_ms: u64,
    #[command(flatten)]
    pub lag: LagSettings,
    /// How often each API process audits the ledger (`/metrics`, `/readyz`), in ms.
    #[arg(long, env = "DHANMAN_AUDIT_INTERVAL_MS", default_value_t = 60000)]
    pub audit_interval_ms: u64,
    /// How long published outbox rows are kept (`dhanman up` prunes older ones).
    #[arg(long, env = "DHANMAN_RETENTION_OUTBOX", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention_outbox: Duration,
    /// How long idempotency keys are kept: a client's retry window.
    #[arg(long, env = "DHANMAN_RETENTION_IDEMPOTENCY", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention_idempotency: Duration,
    /// How long the processors' gate rows (`processed_events`) are kept behind their
    /// groups' offsets.
    #[arg(long, env = "DHANMAN_RETENTION_GATE", default_value = "30days", value_parser = humantime::parse_duration)]
    pub retention_gate: Duration,
    /// How often `dhanman up` prunes by those retentions.
    #[arg(long, env = "DHANMAN_RETENTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,
    /// Purchase orders above this amount need the CFO's approval as well as a manager's.
    #[arg(long, env = "DHANMAN_PO_CFO_THRESHOLD", default_value = "50000")]
    pub po_cfo_threshold: rust_decimal::Decimal,
    /// SMTP server the notifier sends through, `smtp://host[:port]` (plain SMTP, no TLS).
    #[arg(long, env = "SMTP_URL", default_value = "smtp://127.0.0.1:2525")]
    pub smtp_url: String,
    /// From address of every notification email.
    #[arg(
        long,
        env = "DHANMAN_MAIL_FROM",
        default_value = "Dhanman <no-reply@dhanman.invalid>"
    )]
    pub mail_from: String,
    /// Directory of per-organization template overrides,
    /// `<dir>/<organization_id>/<template>.{subject,txt,html}`; unset: embedded defaults only.
    #[arg(long, env = "DHANMAN_TEMPLATE_DIR")]
    pub template_dir: Option<std::path::PathBuf>,
    /// SMTP attempts of a notification before it is dead-lettered (transient failures).
    #[arg(long, env = "DHANMAN_SMTP_MAX_ATTEMPTS", default_value_t = 5)]
    pub smtp_max_attempts: u32,
    /// Delay before a notification's first retry, in milliseconds; doubles each attempt.
    #[arg(long, env = "DHANMAN_SMTP_BACKOFF_MS", default_value_t = 1000)]
    pub smtp_backoff_ms: u64,
    /// Longest delay between two attempts of a notification, in milliseconds.
    #[arg(long, env = "DHANMAN_SMTP_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub smtp_backoff_max_ms: u64,
    /// Limit of one SMTP conversation (connect to the reply to DATA), in milliseconds.
    #[arg(long, env = "DHANMAN_SMTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub smtp_timeout_ms: u64,
    /// How long a claimed notification is left to its sender before another takes it over
    /// (after a crash), in milliseconds; longer than the SMTP timeout.
    #[arg(long, env = "DHANMAN_SMTP_LEASE_MS", default_value_t = 120_000)]
    pub smtp_lease_ms: u64,
    /// Notifications in flight at once per process.
    #[arg(long, env = "DHANMAN_SMTP_CONCURRENCY", default_value_t = 8)]
    pub smtp_concurrency: usize,
    /// Days before an invoice's due date its payment reminder goes out (at 00:00 UTC); a
    /// time already past when the invoice is seen means the scheduler's next tick.
    #[arg(long, env = "DHANMAN_REMINDER_DAYS_BEFORE", default_value_t = dhanman_processors::reminders::DEFAULT_DAYS_BEFORE)]
    pub reminder_days_before: u32,
    /// How often the reminder scheduler looks for due timers, in milliseconds.
    #[arg(long, env = "DHANMAN_REMINDER_TICK_MS", default_value_t = 1000)]
    pub reminder_tick_ms: u64,
}

impl Config {
    pub fn registry_url(&self) -> String {
        match &self.schema_registry_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => schemas_cli::embedded_registry_url(self.http_addr),
        }
    }

    pub fn retention(&self) -> dhanman_connectors::retention::Retention {
        dhanman_connectors::retention::Retention {
            outbox: self.retention_outbox,
            idempotency: self.retention_idempotency,
            gate: self.retention_gate,
        }
    }

    pub fn embedded_registry(&self) -> bool {
        self.schema_registry_url
            .as_deref()
            .is_none_or(str::is_empty)
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(self.db_pool)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.database_url)
            .await
            .with_context(|| "connecting to Postgres (DATABASE_URL)".to_string())
    }

    pub fn codec(&self) -> anyhow::Result<Arc<Codec>> {
        use secrecy::ExposeSecret;
        let credentials = self
            .schema_registry_user_info
            .as_ref()
            .map(|info| dhanman_schemas::codec::Credentials::parse(info.expose_secret()))
            .transpose()
            .context("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")?;
        Ok(Arc::new(
            Codec::connect(&self.registry_url(), credentials)?
                .with_topic_prefix(&self.topic_prefix),
        ))
    }

    /// The topics `processor` reads, as named on the broker.
    pub fn topics_of(&self, processor: &impl dhanman_processors::Processor) -> Vec<String> {
        processor
            .topics()
            .iter()
            .map(|t| format!("{}{t}", self.topic_prefix))
            .collect()
    }

    /// The ledger's accounts, checked against the chart when they are not the defaults.
    pub async fn ledger_accounts(&self) -> anyhow::Result<dhanman_processors::ledger::Accounts> {
        use sqlx::Connection;
        let Some(accounts) = self.ledger_accounts.clone() else {
            return Ok(Default::default());
        };
        let mut conn = sqlx::PgConnection::connect(&self.database_url)
            .await
            .context("connecting to Postgres (DATABASE_URL)")?;
        accounts
            .verify(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("DHANMAN_LEDGER_ACCOUNTS: {e}"))?;
        Ok(accounts)
    }

    /// What building the processors and their companions takes.
    pub fn processor_settings(&self) -> catalog::Settings {
        let mut sender = notifier::sender::SenderConfig::new(&self.smtp_url, &self.mail_from);
        sender.max_attempts = self.smtp_max_attempts;
        sender.backoff = Duration::from_millis(self.smtp_backoff_ms);
        sender.max_backoff = Duration::from_millis(self.smtp_backoff_max_ms);
        sender.timeout = Duration::from_millis(self.smtp_timeout_ms);
        sender.lease = Duration::from_millis(self.smtp_lease_ms);
        sender.concurrency = self.smtp_concurrency;
        catalog::Settings {
            template_dir: self.template_dir.clone(),
            reminder_days_before: self.reminder_days_before,
            reminder_tick: Duration::from_millis(self.reminder_tick_ms),
            sender,
            ledger_accounts: self.ledger_accounts.clone().unwrap_or_default(),
        }
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(&self.kafka_bootstrap_servers);
        config.max_batch = self.batch_size;
        config.lanes = self.lanes;
        config.topic_prefix = self.topic_prefix.clone();
        config
    }

    /// The monthly-invoices schedule, if one is set; a bad expression is an error naming
    /// the variable.
    pub fn monthly_schedule(&self) -> anyhow::Result<Option<cron::Schedule>> {
        match self.monthly_invoices_cron.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(expr) => expr.parse().map(Some).with_context(|| {
                format!("DHANMAN_MONTHLY_INVOICES_CRON {expr:?} is not a cron expression")
            }),
        }
    }

    pub fn app_state(&self, pool: PgPool) -> dhanman_api::AppState {
        dhanman_api::AppState {
            pool,
            consistency_wait: Duration::from_millis(self.consistency_wait_ms),
            gate_retention: self.retention_gate,
            applied: Default::default(),
            approval_policy: dhanman_producers::purchase::ApprovalPolicy {
                cfo_threshold: self.po_cfo_threshold,
            },
            payments: None,
            ledger_audit: None,
            lag_rules: self.lag.rules(),
            rate_limit: dhanman_api::rate_limit::KeyRateLimit::new(
                self.api_rate_limit,
                self.api_rate_burst,
            ),
        }
    }

    /// The payment saga with its gateway client (not yet recovering; see [`run_api`]).
    pub fn payments(&self, pool: PgPool) -> anyhow::Result<dhanman_payments::Payments> {
        let gateway = dhanman_payments::GatewayClient::new(dhanman_payments::GatewaySettings {
            url: self.gateway_url.clone(),
            timeout: Duration::from_millis(self.gateway_timeout_ms),
            retries: self.gateway_retries,
            backoff: Duration::from_millis(self.gateway_backoff_ms),
            breaker_threshold: self.gateway_breaker_threshold,
            breaker_cool_down: Duration::from_millis(self.gateway_breaker_cool_down_ms),
        })
        .context("building the payment gateway client (DHANMAN_GATEWAY_URL)")?;
        Ok(dhanman_payments::Payments::new(
            pool,
            gateway,
            self.fault_crash_at,
            Duration::from_millis(self.payment_recovery_interval_ms),
        ))
    }
}

/// How lag is judged and how much of a cluster is sampled (see docs/operations.md,
/// "Consumer lag").
#[derive(Debug, Clone, clap::Args)]
pub struct LagSettings {
    /// Samples of each partition the lag status judges (the newest ones).
    #[arg(long, env = "DHANMAN_LAG_WINDOW", default_value_t = 10, value_parser = clap::value_parser!(u16).range(2..=100))]
    pub lag_window: u16,
    /// Lag, in records, a partition may have and still count as caught up.
    #[arg(long, env = "DHANMAN_LAG_ALLOWED", default_value_t = 0)]
    pub lag_allowed: u32,
    /// Most partitions one lag sample measures: the pipeline's groups always, other groups
    /// while they fit (the rest are counted in `dhanman_lag_groups_left_out`).
    #[arg(long, env = "DHANMAN_LAG_MAX_PARTITIONS", default_value_t = dhanman_connectors::lag::MAX_PARTITIONS)]
    pub lag_max_partitions: usize,
}

impl LagSettings {
    pub fn rules(&self) -> dhanman_connectors::lag::status::Rules {
        dhanman_connectors::lag::status::Rules {
            window: usize::from(self.lag_window),
            allowed_lag: i64::from(self.lag_allowed),
        }
    }

    /// What a lag sample covers: every group of the installation's topics, or one.
    pub fn scope(
        &self,
        topic_prefix: &str,
        group: Option<String>,
    ) -> dhanman_connectors::lag::Scope {
        dhanman_connectors::lag::Scope {
            group,
            topic_prefix: topic_prefix.to_string(),
            rules: self.rules(),
            max_partitions: self.lag_max_partitions,
        }
    }
}

/// Where the operations tools connect: Postgres and the broker.
#[derive(Debug, Clone, clap::Args)]
pub struct Connections {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka_bootstrap_servers: String,
    /// Prefix of every topic name of the installation.
    #[arg(long, env = "DHANMAN_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

impl Connections {
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.database_url)
            .await
            .context("connecting to Postgres (DATABASE_URL)")
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`); JSON lines when
/// `DHANMAN_LOG_FORMAT=json`.
pub fn init_telemetry(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let json = std::env::var("DHANMAN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn parse_secret(raw: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(raw.to_string()))
}

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
    dhanman_connectors::kafka::ensure_replicated_topics(
        &config.kafka_bootstrap_servers,
        &all_topics(&config.topic_prefix),
        config.topic_partitions,
        config.topic_replicas,
    )
    .await
    .context("creating topics (KAFKA_BOOTSTRAP_SERVERS)")
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
        Duration::from_millis(config.lag_interval_ms),
    )));
    // The ledger audit, in every API process (it only reads): its gauge, and a line of
    // `/readyz` from its latest report.
    let audit_report = Arc::new(tokio::sync::RwLock::new(None));
    let _audit = AbortOnDrop(tokio::spawn(dhanman_processors::audit::run_periodically(
        pool.clone(),
        Duration::from_millis(config.audit_interval_ms),
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
    let producer = dhanman_connectors::kafka::idempotent_producer(&config.kafka_bootstrap_servers)?;
    Relay::new(pool, producer, config.codec()?)
        .with_topic_prefix(&config.topic_prefix)
        .run_until(stop.into_requested())
        .await;
    Ok(())
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

/// The live consumer of a processor, in its group, until `stop`.
struct Live<'a> {
    config: &'a Config,
    pool: PgPool,
    stop: Stop,
}

impl ProcessorJob for Live<'_> {
    async fn with<P: dhanman_processors::Processor>(self, processor: P) -> anyhow::Result<()> {
        let codec = self.config.codec()?;
        Runtime::new(processor, self.pool, codec, self.config.runtime_config())
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
pub async fn run_all(
    config: &Config,
    listener: tokio::net::TcpListener,
    pool: PgPool,
    mut stop: Stop,
) -> anyhow::Result<()> {
    let stopper = Stopper::default();
    let mut parts = tokio::task::JoinSet::new();
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
        let (config, pool, stop) = (config.clone(), pool.clone(), stopper.signal());
        parts.spawn(async move { run_api(&config, listener, pool, stop).await });
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
