//! The settings every part reads, from flags and the environment (docs/configuration.md
//! lists each; a test checks the page against these definitions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dhanman_processors::{RuntimeConfig, catalog, notifier};
use dhanman_schemas::Codec;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Settings, all from the environment (see docs/configuration.md).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub database_url: DatabaseUrl,
    #[command(flatten)]
    pub kafka_bootstrap_servers: KafkaBootstrapServers,
    #[command(flatten)]
    pub schema_registry_url: SchemaRegistryUrl,
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
    #[arg(long, env = "DHANMAN_TOPIC_PARTITIONS", default_value_t = 4, value_parser = at_least_one::<i32>())]
    pub topic_partitions: i32,
    /// Replicas of each partition of the topics the pipeline creates (3 on a cluster of
    /// three brokers, with `min.insync.replicas` 2).
    #[arg(
        long,
        env = "DHANMAN_TOPIC_REPLICAS",
        default_value_t = 1,
        value_parser = clap::builder::RangedI64ValueParser::<i32>::new().range(1..=i64::from(i16::MAX))
    )]
    pub topic_replicas: i32,
    /// Requests per second one API key may make to one API process (sustained; 0: no
    /// limit); past it, 429 with `Retry-After`.
    #[arg(long, env = "DHANMAN_API_RATE_LIMIT", default_value_t = dhanman_api::rate_limit::DEFAULT_PER_SECOND)]
    pub api_rate_limit: u32,
    /// Requests one API key may make at once above its sustained rate.
    #[arg(long, env = "DHANMAN_API_RATE_BURST", default_value_t = dhanman_api::rate_limit::DEFAULT_BURST)]
    pub api_rate_burst: u32,
    /// How long an API process believes a key that authenticated without asking the
    /// database again, in milliseconds (0: every request asks). A key revoked through
    /// another API process keeps working here for at most this long.
    #[arg(long, env = "DHANMAN_API_KEY_CACHE_MS", default_value = "1000")]
    pub api_key_cache_ms: Millis,
    /// How long a query with `?consistent_with=` waits for the ledger, in milliseconds.
    #[arg(long, env = "DHANMAN_CONSISTENCY_WAIT_MS", default_value = "5000")]
    pub consistency_wait_ms: Millis,
    /// Accounts the ledger's posting rules use instead of the defaults, as `key=code` pairs
    /// (`revenue=4100,bank=1010`; keys: bank, revenue, salaries_payable, salary_expense,
    /// expenses, payable, reserved_budget, commitments). Each must be in the chart of
    /// accounts. Entries posted before a change keep theirs until `dhanman replay
    /// --processor ledger --correct --execute`.
    #[arg(long, env = "DHANMAN_LEDGER_ACCOUNTS")]
    pub ledger_accounts: Option<dhanman_processors::ledger::Accounts>,
    /// Largest batch a processor applies in one transaction (1 to 100,000).
    #[arg(
        long,
        env = "DHANMAN_BATCH_SIZE",
        default_value_t = dhanman_processors::runtime::DEFAULT_MAX_BATCH,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000)
    )]
    pub batch_size: usize,
    /// Prefix of every topic name, to share a cluster between installations or tests.
    #[arg(long, env = "DHANMAN_TOPIC_PREFIX", default_value = "", value_parser = topic_prefix)]
    pub topic_prefix: String,
    /// Concurrent transactions a processor splits a large batch into, by key (1 to 64).
    #[arg(
        long,
        env = "DHANMAN_LANES",
        default_value_t = dhanman_processors::runtime::DEFAULT_LANES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub lanes: usize,
    /// Postgres connections per process (1 to 1,000).
    #[arg(
        long,
        env = "DHANMAN_DB_POOL",
        default_value_t = 10,
        value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=1000)
    )]
    pub db_pool: u32,
    /// Invoice writers of a process that serves the API (1 to 64), each with a Postgres
    /// session of its own besides `DHANMAN_DB_POOL`.
    #[arg(
        long,
        env = "DHANMAN_INVOICE_WRITERS",
        default_value_t = dhanman_api::invoice_writer::DEFAULT_WRITERS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub invoice_writers: usize,
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
    #[arg(long, env = "DHANMAN_GATEWAY_TIMEOUT_MS", default_value = "5000", value_parser = Millis::positive)]
    pub gateway_timeout_ms: Millis,
    /// Retries of a gateway request after a transient failure (timeout, 5xx, connection
    /// lost), with exponential backoff and jitter.
    #[arg(long, env = "DHANMAN_GATEWAY_RETRIES", default_value_t = 3)]
    pub gateway_retries: usize,
    /// Delay before the first retry, in milliseconds; doubles each retry.
    #[arg(long, env = "DHANMAN_GATEWAY_BACKOFF_MS", default_value = "200")]
    pub gateway_backoff_ms: Millis,
    /// Consecutive transient gateway failures that open the circuit breaker.
    #[arg(long, env = "DHANMAN_GATEWAY_BREAKER_THRESHOLD", default_value_t = 5, value_parser = at_least_one::<u32>())]
    pub gateway_breaker_threshold: u32,
    /// How long the open breaker fails calls fast before it lets a trial through, in ms.
    #[arg(
        long,
        env = "DHANMAN_GATEWAY_BREAKER_COOL_DOWN_MS",
        default_value = "30000"
    )]
    pub gateway_breaker_cool_down_ms: Millis,
    /// How often unfinished payment sagas are resumed (besides at start-up), in ms.
    #[arg(
        long,
        env = "DHANMAN_PAYMENT_RECOVERY_INTERVAL_MS",
        default_value = "30000",
        value_parser = Millis::positive
    )]
    pub payment_recovery_interval_ms: Millis,
    /// Testing switch: abort the process at a payment saga crash point (`after-start`,
    /// `after-charge`, `after-complete`, `before-refund`, `after-refund`).
    #[arg(long, env = "DHANMAN_FAULT_CRASH_AT", hide = true, value_parser = dhanman_payments::CrashPoint::parse)]
    pub fault_crash_at: Option<dhanman_payments::CrashPoint>,
    /// How often the API process samples consumer lag (for `/metrics` and `GET /v1/lag`), in ms.
    #[arg(long, env = "DHANMAN_LAG_INTERVAL_MS", default_value = "5000", value_parser = Millis::positive)]
    pub lag_interval_ms: Millis,
    #[command(flatten)]
    pub lag: LagSettings,
    /// How often each API process audits the ledger (`/metrics`, `/readyz`), in ms.
    #[arg(long, env = "DHANMAN_AUDIT_INTERVAL_MS", default_value = "60000", value_parser = Millis::positive)]
    pub audit_interval_ms: Millis,
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
    #[arg(long, env = "DHANMAN_RETENTION_INTERVAL", default_value = "1h", value_parser = positive_duration)]
    pub retention_interval: Duration,
    /// Purchase orders above this amount need the CFO's approval as well as a manager's.
    #[arg(long, env = "DHANMAN_PO_CFO_THRESHOLD", default_value = "50000", value_parser = not_negative)]
    pub po_cfo_threshold: rust_decimal::Decimal,
    #[command(flatten)]
    pub smtp_url: SmtpUrl,
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
    #[arg(long, env = "DHANMAN_SMTP_MAX_ATTEMPTS", default_value_t = 5, value_parser = at_least_one::<u32>())]
    pub smtp_max_attempts: u32,
    /// Delay before a notification's first retry, in milliseconds; doubles each attempt.
    #[arg(long, env = "DHANMAN_SMTP_BACKOFF_MS", default_value = "1000")]
    pub smtp_backoff_ms: Millis,
    /// Longest delay between two attempts of a notification, in milliseconds.
    #[arg(long, env = "DHANMAN_SMTP_BACKOFF_MAX_MS", default_value = "300000")]
    pub smtp_backoff_max_ms: Millis,
    /// Limit of one SMTP conversation (connect to the reply to DATA), in milliseconds.
    #[arg(long, env = "DHANMAN_SMTP_TIMEOUT_MS", default_value = "30000", value_parser = Millis::positive)]
    pub smtp_timeout_ms: Millis,
    /// How long a claimed notification is left to its sender before another takes it over
    /// (after a crash), in milliseconds; longer than the SMTP timeout.
    #[arg(long, env = "DHANMAN_SMTP_LEASE_MS", default_value = "120000", value_parser = Millis::positive)]
    pub smtp_lease_ms: Millis,
    /// Notifications in flight at once per process.
    #[arg(long, env = "DHANMAN_SMTP_CONCURRENCY", default_value_t = 8, value_parser = at_least_one::<usize>())]
    pub smtp_concurrency: usize,
    /// Days before an invoice's due date its payment reminder goes out (at 00:00 UTC); a
    /// time already past when the invoice is seen means the scheduler's next tick.
    #[arg(long, env = "DHANMAN_REMINDER_DAYS_BEFORE", default_value_t = dhanman_processors::reminders::DEFAULT_DAYS_BEFORE)]
    pub reminder_days_before: u32,
    /// How often the reminder scheduler looks for due timers, in milliseconds.
    #[arg(long, env = "DHANMAN_REMINDER_TICK_MS", default_value = "1000", value_parser = Millis::positive)]
    pub reminder_tick_ms: Millis,
}

impl Config {
    pub fn registry_url(&self) -> String {
        match self.schema_registry_url.get() {
            Some(url) => url.to_string(),
            None => crate::schemas_cli::embedded_registry_url(self.http_addr),
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
        self.schema_registry_url.get().is_none()
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        open_pool(
            self.database_url.expose_secret(),
            PgPoolOptions::new().max_connections(self.db_pool),
        )
        .await
    }

    pub fn codec(&self) -> anyhow::Result<Arc<Codec>> {
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
        let mut conn = sqlx::PgConnection::connect(self.database_url.expose_secret())
            .await
            .with_context(|| format!("connecting to Postgres ({})", DATABASE_URL.names()))?;
        accounts
            .verify(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("DHANMAN_LEDGER_ACCOUNTS: {e}"))?;
        Ok(accounts)
    }

    /// What building the processors and their companions takes.
    pub fn processor_settings(&self) -> catalog::Settings {
        let mut sender =
            notifier::sender::SenderConfig::new(self.smtp_url.expose_secret(), &self.mail_from);
        sender.max_attempts = self.smtp_max_attempts;
        sender.backoff = self.smtp_backoff_ms.get();
        sender.max_backoff = self.smtp_backoff_max_ms.get();
        sender.timeout = self.smtp_timeout_ms.get();
        sender.lease = self.smtp_lease_ms.get();
        sender.concurrency = self.smtp_concurrency;
        catalog::Settings {
            template_dir: self.template_dir.clone(),
            reminder_days_before: self.reminder_days_before,
            reminder_tick: self.reminder_tick_ms.get(),
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

    /// The runtime of the live consumer of processor `name`: [`Config::runtime_config`]
    /// with the processor's own linger ([`catalog::ProcessorSpec::linger`]).
    pub fn runtime_config_for(&self, name: &str) -> RuntimeConfig {
        let mut config = self.runtime_config();
        if let Ok(spec) = catalog::find(name) {
            config.linger = spec.linger;
        }
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
            invoices: dhanman_api::invoice_writer::InvoiceWriter::start(
                &pool,
                self.invoice_writers,
            ),
            pool,
            consistency_wait: self.consistency_wait_ms.get(),
            gate_retention: self.retention_gate,
            applied: Default::default(),
            approval_policy: dhanman_producers::purchase::ApprovalPolicy {
                cfo_threshold: self.po_cfo_threshold,
            },
            payments: None,
            ledger_audit: None,
            lag_rules: self.lag.rules(),
            keys: dhanman_api::key_cache::KeyCache::new(self.api_key_cache_ms.get()),
            customer_organizations: dhanman_api::customer_organizations(),
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
            timeout: self.gateway_timeout_ms.get(),
            retries: self.gateway_retries,
            backoff: self.gateway_backoff_ms.get(),
            breaker_threshold: self.gateway_breaker_threshold,
            breaker_cool_down: self.gateway_breaker_cool_down_ms.get(),
        })
        .context("building the payment gateway client (DHANMAN_GATEWAY_URL)")?;
        Ok(dhanman_payments::Payments::new(
            pool,
            gateway,
            self.fault_crash_at,
            self.payment_recovery_interval_ms.get(),
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
    #[arg(
        long,
        env = "DHANMAN_LAG_MAX_PARTITIONS",
        default_value_t = dhanman_connectors::lag::MAX_PARTITIONS,
        value_parser = at_least_one::<usize>()
    )]
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
    #[command(flatten)]
    pub database_url: DatabaseUrl,
    #[command(flatten)]
    pub kafka_bootstrap_servers: KafkaBootstrapServers,
    /// Prefix of every topic name of the installation.
    #[arg(long, env = "DHANMAN_TOPIC_PREFIX", default_value = "", value_parser = topic_prefix)]
    pub topic_prefix: String,
}

impl Connections {
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        self.database_url.pool().await
    }
}

impl DatabaseUrl {
    /// A pool of the default size on this database ([`open_pool`]).
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        open_pool(self.expose_secret(), PgPoolOptions::new()).await
    }
}

/// A pool on the database `url` names, sessions opened as [`connect_options`] says, or an
/// error saying where it tried (host, port, database; never the password) and why: sqlx's
/// own answer when no session opened in time is a bare time-out, so one more attempt,
/// alone, finds the reason (refused, a password, a database that does not exist).
pub async fn open_pool(url: &str, pool: PgPoolOptions) -> anyhow::Result<PgPool> {
    let options =
        connect_options(url).with_context(|| format!("reading {}", DATABASE_URL.names()))?;
    let place = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let failed = match pool
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => return Ok(pool),
        Err(sqlx::Error::PoolTimedOut) => {
            use sqlx::Connection;
            match sqlx::PgConnection::connect_with(&options).await {
                Ok(_) => sqlx::Error::PoolTimedOut,
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    // Its text alone: sqlx's errors repeat their source in their own words.
    Err(anyhow::anyhow!("{failed}")).with_context(|| {
        format!(
            "connecting to Postgres at {place} ({})",
            DATABASE_URL.names()
        )
    })
}

/// A duration given as a number of milliseconds, as the `*_MS` settings give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(Duration);

impl Millis {
    pub fn get(self) -> Duration {
        self.0
    }

    /// A period or a limit: zero would spin a loop or fail every call at once.
    fn positive(raw: &str) -> Result<Millis, String> {
        match raw.parse::<Millis>() {
            Ok(Millis(d)) if d.is_zero() => Err("must be at least 1 (milliseconds)".into()),
            Ok(ms) => Ok(ms),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A count that must be at least one (zero would do nothing, or nothing at all forever).
fn at_least_one<T>() -> clap::builder::RangedI64ValueParser<T>
where
    T: TryFrom<i64> + Clone + Send + Sync + 'static,
    <T as TryFrom<i64>>::Error: std::error::Error + Send + Sync + 'static,
{
    clap::builder::RangedI64ValueParser::<T>::new().range(1..)
}

/// The variable and value a refused setting was read from, when it came from one: clap's
/// error names the flag (`--db-pool <DB_POOL>`) even when the value was `DHANMAN_DB_POOL`'s.
/// `None` when the flag itself was given (in `argv`) or the argument reads no variable.
pub fn refused_variable(
    error: &clap::Error,
    command: &clap::Command,
    argv: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let clap::error::ContextValue::String(arg) = error.get(clap::error::ContextKind::InvalidArg)?
    else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    if argv
        .iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    {
        return None;
    }
    // The flag may be one of several subcommands': it names a variable only when all of
    // those that read one read the same.
    let mut args = Vec::new();
    args_named(command, long, &mut args);
    let arg = *args.first()?;
    let name = arg.get_env()?;
    if args.iter().any(|a| a.get_env() != Some(name)) {
        return None;
    }
    let name = name.to_string_lossy().into_owned();
    let value = env(&name)?;
    Some(if args.iter().any(|a| a.is_hide_env_values_set()) {
        name
    } else {
        format!("{name}={value}")
    })
}

/// Every argument of `command` and its subcommands whose flag is `--long` and which reads a
/// variable.
fn args_named<'c>(command: &'c clap::Command, long: &str, found: &mut Vec<&'c clap::Arg>) {
    found.extend(
        command
            .get_arguments()
            .filter(|a| a.get_long() == Some(long) && a.get_env().is_some()),
    );
    for sub in command.get_subcommands() {
        args_named(sub, long, found);
    }
}

/// A topic prefix the broker accepts in every topic name it makes: Kafka's characters
/// (letters, digits, `.`, `_`, `-`), and short enough that the longest name with it, a
/// dead-letter topic's, stays within Kafka's 249.
pub(crate) fn topic_prefix(raw: &str) -> Result<String, String> {
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed in a topic name (letters, digits, '.', '_' and '-' are)"
        ));
    }
    let longest = dhanman_schemas::topics::ALL
        .iter()
        .map(|t| dhanman_schemas::topics::dlq(t).len())
        .max()
        .unwrap_or(0);
    if raw.len() + longest > 249 {
        return Err(format!(
            "at most {} characters: topic names are at most 249",
            249 - longest
        ));
    }
    Ok(raw.to_string())
}

/// An amount that must not be negative.
fn not_negative(raw: &str) -> Result<rust_decimal::Decimal, String> {
    match raw.parse::<rust_decimal::Decimal>() {
        Ok(amount) if amount.is_sign_negative() && !amount.is_zero() => {
            Err("must not be negative".into())
        }
        Ok(amount) => Ok(amount),
        Err(e) => Err(e.to_string()),
    }
}

/// An interval of a periodic task: zero would spin it.
fn positive_duration(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

impl std::str::FromStr for Millis {
    type Err = std::num::ParseIntError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.parse().map(|ms| Millis(Duration::from_millis(ms)))
    }
}

fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_string()))
}

mod aliased;

pub use aliased::*;

/// How the pipeline's processes open their Postgres sessions: as `url` says, with JIT
/// compilation off (sent with the session's start, so it costs no round trip). Their
/// statements are short; the few whose estimated cost passes `jit_above_cost` are a batch's
/// statements over arrays, and those spent more time compiling than executing (the
/// reminders processor's payments: 25-30 ms of JIT in a 64 ms statement). Options the URL
/// sets itself are kept.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.options([("jit", "off")]))
}

#[cfg(test)]
mod tests;
