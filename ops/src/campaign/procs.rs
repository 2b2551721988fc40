//! The campaign's processes: two of each part of the pipeline, each a `dhanman` child of
//! its own with its log in the campaign's directory, killed and started by name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::process::{Child, Command};

/// What every process of the campaign shares.
pub struct Shared {
    /// Replicas of the topics the processes create.
    pub replicas: u32,
    pub binary: PathBuf,
    pub database_url: String,
    pub bootstrap: String,
    pub prefix: String,
    pub gateway_url: String,
    pub smtp_url: String,
    pub dir: PathBuf,
}

/// One process: its name, its arguments, its API port (API processes only).
struct Part {
    args: Vec<&'static str>,
    port: Option<u16>,
    child: Option<Child>,
}

pub struct Fleet {
    shared: Shared,
    parts: BTreeMap<String, Part>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Fleet {
    pub fn new(shared: Shared) -> Fleet {
        let mut parts = BTreeMap::new();
        for n in 1..=2 {
            let port = free_port().ok();
            parts.insert(
                format!("api-{n}"),
                Part {
                    args: vec!["api"],
                    port,
                    child: None,
                },
            );
            parts.insert(
                format!("relay-{n}"),
                Part {
                    args: vec!["relay"],
                    port: None,
                    child: None,
                },
            );
            for processor in &dhanman_processors::catalog::NAMES {
                parts.insert(
                    format!("{processor}-{n}"),
                    Part {
                        args: vec!["process", processor],
                        port: None,
                        child: None,
                    },
                );
            }
        }
        Fleet { shared, parts }
    }

    pub fn api_urls(&self) -> Vec<String> {
        self.parts
            .values()
            .filter_map(|p| p.port)
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url.clone()
    }

    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.parts.keys().cloned().collect();
        for name in names {
            self.start(&name).await?;
        }
        Ok(())
    }

    /// Starts (or restarts) process `name`, appending to its log.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        // The first API process's embedded registry is every other process's registry.
        let registry = self.parts.get("api-1").and_then(|p| p.port);
        let shared = &self.shared;
        let part = self.parts.get_mut(name).context("no such process")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(shared.dir.join(format!("{name}.log")))?;
        // Processes that serve no API get port 0, never bound.
        let api = format!("127.0.0.1:{}", part.port.unwrap_or(0));
        let mut command = Command::new(&shared.binary);
        command
            .args(&part.args)
            .env("DHANMAN_DATABASE_URL", &shared.database_url)
            .env("DHANMAN_KAFKA_BOOTSTRAP_SERVERS", &shared.bootstrap)
            .env("DHANMAN_TOPIC_PREFIX", &shared.prefix)
            .env("DHANMAN_TOPIC_REPLICAS", shared.replicas.to_string())
            .env("DHANMAN_GATEWAY_URL", &shared.gateway_url)
            .env("DHANMAN_SMTP_URL", &shared.smtp_url)
            .env("DHANMAN_SMTP_MAX_ATTEMPTS", "1000000")
            .env("DHANMAN_LAG_INTERVAL_MS", "1000")
            .env("DHANMAN_HTTP_ADDR", api)
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
            .env_remove("SCHEMA_REGISTRY_URL")
            .env_remove("DHANMAN_SCHEMA_REGISTRY_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let (None, Some(first)) = (part.port, registry) {
            command.env(
                "DHANMAN_SCHEMA_REGISTRY_URL",
                format!("http://127.0.0.1:{first}/schema-registry"),
            );
        }
        part.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {name}"))?,
        );
        Ok(())
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let part = self.parts.get_mut(name).context("no such process")?;
        if let Some(mut child) = part.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("killing {name}"))?;
        }
        Ok(())
    }

    /// A process to kill, any of them.
    pub fn pick(&self, rng: &mut StdRng) -> String {
        let names: Vec<&String> = self.parts.keys().collect();
        names[rng.random_range(0..names.len())].clone()
    }

    /// Waits until both APIs answer `/readyz`.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        for url in self.api_urls() {
            loop {
                let ready = http.get(format!("{url}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the API at {url} was not ready within 2 minutes; logs in {}",
                        self.shared.dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    pub async fn stop_all(&mut self) {
        for part in self.parts.values_mut() {
            if let Some(mut child) = part.child.take() {
                let _ = child.kill().await;
            }
        }
    }
}
