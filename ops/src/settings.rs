//! The settings every part reads, from flags and the environment (docs/configuration.md
//! lists each; a test checks the page against these definitions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dhanman_processors::{RuntimeConfig, catalog, notifier};
use dhanman_schemas::Codec;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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
            _ => crate::schemas_cli::embedded_registry_url(self.http_addr),
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

fn parse_secret(raw: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(raw.to_string()))
}
