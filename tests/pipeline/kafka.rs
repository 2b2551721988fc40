//! Kafka's side of the fixtures: Apache Kafka's own command-line tools (the referees of
//! `dhanman lag` and `dhanman offsets`), and a broker of a test's own, started and stopped
//! by the same scripts a developer uses, for tests that take the broker away.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/kafka-tools.sh <tool> <args>` and returns its stdout; panics with its
/// stderr if it fails.
pub async fn kafka_tool(tool: &str, args: &[&str]) -> String {
    let output = Command::new(root().join("scripts/kafka-tools.sh"))
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run scripts/kafka-tools.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kafka-{tool} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The rows `kafka-consumer-groups` prints for `group` (header, warnings and blank lines
/// dropped), split on whitespace.
pub fn group_rows(output: &str, group: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|cols| cols.first().is_some_and(|c| c == group))
        .collect()
}

/// An Apache Kafka node of the test's own (ports and storage of its own), so that a test
/// can stop and start it without disturbing the tests that share the common broker.
pub struct PrivateBroker {
    data: PathBuf,
    port: u16,
    controller_port: u16,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let data = std::env::temp_dir().join(format!("dhanman-kafka-{}", uuid::Uuid::new_v4()));
        let broker = PrivateBroker {
            data,
            port: free_port(),
            controller_port: free_port(),
        };
        broker.up().await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, name: &str) -> Command {
        let mut command = Command::new(root().join("scripts").join(name));
        command
            .env("DHANMAN_DATA_DIR", &self.data)
            .env("DHANMAN_KAFKA_PORT", self.port.to_string())
            .env(
                "DHANMAN_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("DHANMAN_KAFKA_HEAP", "384m")
            // Kafka only: the shared RabbitMQ is another test's (which may be restarting it).
            .env("DHANMAN_RABBITMQ", "off")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .stdin(Stdio::null());
        command
    }

    /// Starts the node (formatting its storage the first time) and waits until it
    /// answers, as `scripts/dev-services.sh` does.
    pub async fn up(&self) {
        let output = self
            .script("dev-services.sh")
            .env(
                "DATABASE_URL",
                std::env::var("DATABASE_URL").unwrap_or_default(),
            )
            .output()
            .await
            .expect("run scripts/dev-services.sh");
        assert!(
            output.status.success(),
            "the private broker did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the node (SIGTERM, a controlled shutdown).
    pub async fn down(&self) {
        let output = tokio::time::timeout(
            Duration::from_secs(90),
            self.script("stop-dev-services.sh").output(),
        )
        .await
        .expect("the private broker to stop")
        .expect("run scripts/stop-dev-services.sh");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(root().join("scripts/stop-dev-services.sh"))
            .env("DHANMAN_DATA_DIR", &self.data)
            .env("DHANMAN_RABBITMQ", "off")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // A failed test keeps the node's logs, as it keeps its processes' logs.
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!(
                "{}-logs",
                self.data.file_name().unwrap_or_default().to_string_lossy()
            ));
            if std::fs::rename(self.data.join("kafka/logs"), &kept).is_ok() {
                eprintln!("the private broker's logs: {}", kept.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
