//! The docker-compose deployment, checked by structure (no Docker engine runs here): the
//! services exist with healthchecks, every variable given to `dhanman` is one it reads,
//! Prometheus scrapes every dhanman service on the port it serves `/metrics` on, and the
//! Grafana dashboard names only metrics the code exports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_yaml_ng::{Mapping, Value};

use crate::metrics::EXPORTED;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    // Compose files share blocks with `<<: *anchor`.
    value.apply_merge().expect("merge keys");
    value
}

/// Variables `dhanman`'s `Config` reads, from its clap definition, with the standard names
/// some of them fall back on.
fn config_env() -> BTreeSet<String> {
    let mut read: BTreeSet<String> =
        dhanman_ops::Config::augment_args(clap::Command::new("dhanman"))
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
    for setting in dhanman_ops::ALIASED {
        if read.contains(setting.name) {
            read.insert(setting.alias.to_string());
        }
    }
    read
}

/// Read outside `Config`: the log filter and format (`init_telemetry`).
const LOG_ENV: &[&str] = &["RUST_LOG", "DHANMAN_LOG_FORMAT"];

struct Compose {
    services: Mapping,
}

impl Compose {
    fn load() -> Compose {
        let file = yaml(&root().join("docker-compose.yml"));
        let services = file["services"]
            .as_mapping()
            .expect("a services mapping")
            .clone();
        Compose { services }
    }

    fn service(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("no service {name} in docker-compose.yml"))
    }

    fn names(&self) -> BTreeSet<String> {
        self.services
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    }

    /// Services running the `dhanman` binary, with their arguments.
    fn dhanman(&self) -> Vec<(String, Vec<String>)> {
        self.services
            .iter()
            .filter_map(|(name, s)| {
                let command: Vec<String> = s["command"]
                    .as_sequence()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                (command.first()? == "dhanman")
                    .then(|| (name.as_str().unwrap_or_default().to_string(), command))
            })
            .collect()
    }
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    let env = &service["environment"];
    if let Some(list) = env.as_sequence() {
        return list
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
    }
    env.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    };
                    (k.as_str().unwrap_or_default().to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The healthcheck's command as one string; panics when there is none.
fn healthcheck(name: &str, service: &Value) -> String {
    let check = &service["healthcheck"];
    assert_ne!(
        check["disable"].as_bool(),
        Some(true),
        "{name}: healthcheck disabled"
    );
    match &check["test"] {
        Value::Sequence(parts) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(s) => s.clone(),
        other => panic!("{name}: no healthcheck test ({other:?})"),
    }
}

fn port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?} is not host:port: {e}"))
        .port()
}

/// The port a long-running dhanman service serves `/metrics` on.
fn metrics_port(name: &str, env: &[(String, String)]) -> u16 {
    let var_name = if name == "dhanman-api" {
        "DHANMAN_HTTP_ADDR"
    } else {
        "DHANMAN_METRICS_ADDR"
    };
    port(var(env, var_name).unwrap_or_else(|| panic!("{name}: {var_name} not set")))
}

fn required_services() -> Vec<String> {
    let mut names: Vec<String> = [
        "kafka",
        "schema-registry",
        "postgres",
        "prometheus",
        "grafana",
        "mailpit",
        "dhanman-api",
        "dhanman-relay",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend(dhanman::PROCESSORS.iter().map(|p| format!("dhanman-{p}")));
    names
}

#[test]
fn every_service_is_there_with_a_healthcheck() {
    let compose = Compose::load();
    for name in required_services() {
        let check = healthcheck(&name, compose.service(&name));
        assert!(!check.is_empty(), "{name}");
    }
    // Every processor runs as a service of its own.
    for p in dhanman::PROCESSORS {
        let command = compose
            .dhanman()
            .into_iter()
            .find(|(name, _)| name == &format!("dhanman-{p}"))
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("no service runs processor {p}"));
        assert_eq!(command, ["dhanman", "process", p]);
    }
    // What services wait on exists.
    let names = compose.names();
    for (name, service) in &compose.services {
        if let Some(deps) = service["depends_on"].as_mapping() {
            for dep in deps.keys().filter_map(Value::as_str) {
                assert!(names.contains(dep), "{name:?} depends on unknown {dep}");
            }
        }
    }
    // The dhanman healthchecks run curl; the image must have it.
    assert!(read(&root().join("Dockerfile")).contains(" curl"));
}

#[test]
fn dhanman_services_are_given_only_variables_the_binary_reads() {
    let compose = Compose::load();
    let known = config_env();
    assert!(known.contains("DHANMAN_METRICS_ADDR") && known.contains("SMTP_URL"));
    let dhanman = compose.dhanman();
    assert!(dhanman.len() > dhanman::PROCESSORS.len() + 2, "{dhanman:?}");
    for (name, command) in &dhanman {
        let env = env_of(compose.service(name));
        for (k, _) in &env {
            let read_by_migrate = command[1] == "migrate" && k == "DATABASE_URL";
            assert!(
                read_by_migrate || known.contains(k) || LOG_ENV.contains(&k.as_str()),
                "{name}: the binary reads no variable {k}"
            );
        }
        if command[1] == "migrate" {
            continue;
        }
        for needed in [
            "DATABASE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
            "SCHEMA_REGISTRY_URL",
        ] {
            assert!(var(&env, needed).is_some(), "{name}: {needed} not set");
        }
        // The healthcheck probes the port the process listens on.
        let probe_port = metrics_port(name, &env);
        let check = healthcheck(name, compose.service(name));
        assert!(
            check.contains(&format!(":{probe_port}/")),
            "{name}: healthcheck {check:?} does not probe port {probe_port}"
        );
    }
    // The notifier sends to the SMTP catcher.
    let notifier = env_of(compose.service("dhanman-notifier"));
    assert_eq!(var(&notifier, "SMTP_URL"), Some("smtp://mailpit:1025"));
    let mailpit_ports: Vec<String> = compose.service("mailpit")["ports"]
        .as_sequence()
        .expect("mailpit ports")
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    assert!(mailpit_ports.iter().any(|p| p.ends_with(":1025")));
    assert!(mailpit_ports.iter().any(|p| p.ends_with(":8025")));
}

#[test]
fn prometheus_scrapes_every_dhanman_service_on_its_metrics_port() {
    let compose = Compose::load();
    let prometheus = compose.service("prometheus");
    let mounts: Vec<&str> = prometheus["volumes"]
        .as_sequence()
        .expect("prometheus volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/prometheus/prometheus.yml:")),
        "{mounts:?}"
    );
    let config = yaml(&root().join("deploy/prometheus/prometheus.yml"));
    let mut scraped = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let Some(sds) = job["dns_sd_configs"].as_sequence() else {
            continue;
        };
        for sd in sds {
            let port_in_job = sd["port"].as_u64().expect("dns_sd_configs port") as u16;
            for name in sd["names"]
                .as_sequence()
                .expect("names")
                .iter()
                .filter_map(Value::as_str)
            {
                let env = env_of(compose.service(name));
                assert_eq!(
                    port_in_job,
                    metrics_port(name, &env),
                    "job {:?} scrapes {name} on the wrong port",
                    job["job_name"]
                );
                scraped.insert(name.to_string());
            }
        }
    }
    for (name, command) in compose.dhanman() {
        if command[1] != "migrate" {
            assert!(scraped.contains(&name), "Prometheus does not scrape {name}");
        }
    }
}

/// Metric names in a PromQL expression: identifiers with a known prefix.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("dhanman_") || w.starts_with("kafka_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_is_provisioned_with_a_dashboard_of_exported_metrics() {
    let compose = Compose::load();
    let grafana = compose.service("grafana");
    let mounts: Vec<&str> = grafana["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for dir in [
        "./deploy/grafana/provisioning:",
        "./deploy/grafana/dashboards:",
    ] {
        assert!(
            mounts.iter().any(|m| m.starts_with(dir)),
            "{dir} not mounted"
        );
    }
    let datasources = yaml(&root().join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    let url = datasources["datasources"][0]["url"].as_str().expect("url");
    assert_eq!(url, "http://prometheus:9090");
    assert!(compose.names().contains("prometheus"));
    let provider = yaml(&root().join("deploy/grafana/provisioning/dashboards/dhanman.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard path");
    assert!(
        mounts.iter().any(|m| m.ends_with(&format!(":{path}:ro"))),
        "dashboards are not mounted at {path}"
    );

    let dashboard: serde_json::Value = serde_json::from_str(&read(
        &root().join("deploy/grafana/dashboards/dhanman.json"),
    ))
    .expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let named: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    for name in &named {
        assert!(
            EXPORTED.contains(&name.as_str()),
            "the dashboard queries {name}, which nothing exports"
        );
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "kafka_consumergroup_group_sum_lag",
        "kafka_consumergroup_group_max_lag_seconds",
        "dhanman_events_published_total",
        "dhanman_processor_events_total",
        "dhanman_dlq_size",
        "dhanman_processor_batch_duration_seconds",
        "dhanman_outbox_depth",
    ] {
        assert!(
            named.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn the_compose_broker_runs_the_kafka_version_the_development_broker_pins() {
    let pom = read(&root().join("deploy/kafka/pom.xml"));
    let pinned = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .expect("deploy/kafka/pom.xml pins <kafka.version>");
    let compose = Compose::load();
    let image = compose.service("kafka")["image"]
        .as_str()
        .expect("the kafka service names its image");
    assert_eq!(image, format!("apache/kafka:{pinned}"));
}
