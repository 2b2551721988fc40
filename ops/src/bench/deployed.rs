//! The pipeline as deployed, for `bench e2e`, `bench freshness` and `bench backlog`:
//! `dhanman up` (this executable) as a child process on a database and topic prefix of its
//! own, with its backlog (outbox depth, each processor group's lag) sampled from outside
//! and its peak memory read from `/proc`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

use super::common::{self, Common, ScratchDb, Society};

pub struct Deployed {
    child: Child,
    pub base: String,
    pub prefix: String,
    pub db: ScratchDb,
    pub log: PathBuf,
    bootstrap: String,
    probe: dhanman_connectors::kafka::Probe,
}

/// How `dhanman up` is deployed for a path, and the society its commands are for.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Deployment {
    /// Customers the commands are spread over.
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// `DHANMAN_DB_POOL` of the pipeline.
    #[arg(long, default_value_t = 10)]
    pub db_pool: u32,
}

/// One look at the backlog.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Outbox rows not yet published (parked rows left out).
    pub outbox: i64,
    /// Lag in records of each of the pipeline's groups.
    pub lags: Vec<(String, i64)>,
}

impl Backlog {
    pub fn max_lag(&self) -> i64 {
        self.lags.iter().map(|(_, l)| *l).max().unwrap_or(0)
    }

    /// The group furthest behind, if any is.
    pub fn furthest_behind(&self) -> Option<&str> {
        self.lags
            .iter()
            .filter(|(_, l)| *l > 0)
            .max_by_key(|(_, l)| *l)
            .map(|(g, _)| g.as_str())
    }
}

impl Deployed {
    /// Starts `dhanman up`, runs `measure` against it, stops it (also when measuring
    /// failed) and prints the report: the run of each deployed path.
    pub async fn measure_and_print(
        common: &Common,
        deployment: &Deployment,
        measure: impl AsyncFnOnce(&mut Deployed) -> anyhow::Result<common::Report>,
    ) -> anyhow::Result<()> {
        let mut deployed = Deployed::start(common, deployment).await?;
        let result = measure(&mut deployed).await;
        deployed.stop().await;
        result?.print(common.json);
        Ok(())
    }

    /// Starts `dhanman up` and waits until its API answers `/readyz`.
    pub async fn start(common: &Common, deployment: &Deployment) -> anyhow::Result<Deployed> {
        let db = ScratchDb::create(common.database_url.expose_secret(), 4).await?;
        let prefix = common::topic_prefix();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::env::temp_dir().join(format!("dhanman-bench-{}log", prefix));
        let file = std::fs::File::create(&log)?;
        let exe = std::env::current_exe().context("finding this executable")?;
        let spawned = Command::new(exe)
            .arg("up")
            .env("DHANMAN_DATABASE_URL", &db.url)
            .env(
                "DHANMAN_KAFKA_BOOTSTRAP_SERVERS",
                &*common.kafka_bootstrap_servers,
            )
            .env("DHANMAN_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DHANMAN_TOPIC_PREFIX", &prefix)
            .env("DHANMAN_DB_POOL", deployment.db_pool.to_string())
            // The benchmark measures what the pipeline sustains, not what a key is allowed.
            .env("DHANMAN_API_RATE_LIMIT", "0")
            // No mail server: invoice emails wait in the delivery log, retried with backoff.
            .env("DHANMAN_SMTP_URL", "smtp://127.0.0.1:9")
            .env("DHANMAN_SMTP_MAX_ATTEMPTS", "1000000")
            .env_remove("SCHEMA_REGISTRY_URL")
            .env_remove("DHANMAN_SCHEMA_REGISTRY_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                db.drop().await;
                return Err(e).context("starting dhanman up");
            }
        };
        let probe = dhanman_connectors::kafka::probe(&common.kafka_bootstrap_servers)?;
        let mut deployed = Deployed {
            child,
            base: format!("http://127.0.0.1:{port}"),
            prefix,
            db,
            log,
            bootstrap: common.kafka_bootstrap_servers.to_string(),
            probe,
        };
        if let Err(e) = deployed.wait_ready().await {
            deployed.stop().await;
            return Err(e);
        }
        Ok(deployed)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dhanman up exited ({status}); log: {}", self.log.display());
            }
            let ready = http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dhanman up was not ready within 2 minutes; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn society(&self, customers: usize) -> anyhow::Result<Society> {
        common::society(&self.db.pool, customers).await
    }

    /// A load generator's client of this deployment's API, as `society`'s administrator.
    pub fn client(
        &self,
        society: &Society,
        connections: usize,
    ) -> anyhow::Result<std::sync::Arc<super::load::Client>> {
        Ok(std::sync::Arc::new(super::load::Client::new(
            &self.base,
            &society.api_key,
            connections,
        )?))
    }

    /// The child's peak resident set so far.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        common::peak_rss_bytes(Some(self.child.id()?))
    }

    /// Fails when the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("dhanman up exited ({status}); log: {}", self.log.display());
        }
        Ok(())
    }

    /// Produces `records` (invoices or not, key, value) straight to the pipeline's invoice
    /// and payment topics, as a backfill would; returns the seconds it took.
    pub async fn produce(&self, records: &[(bool, String, Vec<u8>)]) -> anyhow::Result<f64> {
        let topic = |name: &str| format!("{}{name}", self.prefix);
        super::pipeline::produce(
            &self.bootstrap,
            &topic(dhanman_schemas::topics::INVOICES),
            &topic(dhanman_schemas::topics::PAYMENTS),
            records,
        )
        .await
    }

    pub async fn backlog(&self) -> anyhow::Result<Backlog> {
        let (outbox, _) = dhanman_connectors::gauges::outbox_backlog(&self.db.pool).await?;
        let scope = dhanman_connectors::lag::Scope {
            topic_prefix: self.prefix.clone(),
            ..Default::default()
        };
        let report = dhanman_connectors::lag::measure(&self.db.pool, &self.probe, &scope).await?;
        let lags = report
            .groups
            .into_iter()
            .filter(|g| g.ours)
            .map(|g| (g.group, g.lag))
            .collect();
        Ok(Backlog { outbox, lags })
    }

    /// Waits until nothing is waiting (outbox empty, every group caught up), up to `within`;
    /// returns whether it got there.
    pub async fn drain(&mut self, within: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            self.check_running()?;
            let b = self.backlog().await?;
            if b.outbox == 0 && b.max_lag() == 0 {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Kills the child, deletes the run's topics and groups, drops its database.
    pub async fn stop(self) {
        let Deployed {
            mut child,
            prefix,
            db,
            log,
            bootstrap,
            probe,
            ..
        } = self;
        let _ = child.kill().await;
        // Closed before the topics go, so that it asks nothing about topics that are gone.
        drop(probe);
        if let Err(e) = common::drop_topics_and_groups(&bootstrap, &prefix).await {
            eprintln!("deleting the benchmark's topics: {e:#}");
        }
        db.drop().await;
        let _ = std::fs::remove_file(&log);
    }
}
