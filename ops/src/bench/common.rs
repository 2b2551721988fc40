//! What every benchmark path shares: the connection flags, the machine's facts, medians
//! and percentiles, peak memory from `/proc`, databases and topics made for one run, and
//! the report (a table of numbers beside their raw limits, or one JSON object).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

/// Where the services are, and how results are printed; every path takes these.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Common {
    #[command(flatten)]
    pub database_url: crate::DatabaseUrl,
    #[command(flatten)]
    pub kafka_bootstrap_servers: crate::KafkaBootstrapServers,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    pub fn runs(&self) -> usize {
        self.runs.max(1)
    }
}

/// The machine the numbers were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Processors the kernel lists (`/proc/cpuinfo`).
    pub cores: usize,
    /// Processors this process may run on (what `nproc` prints).
    pub nproc: usize,
    pub memory_bytes: u64,
    pub cpu: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            memory_bytes: kib_field(&meminfo, "MemTotal:").unwrap_or(0),
            cpu,
        }
    }
}

/// A `Name:   123 kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The whole machine's CPU time so far, from `/proc/stat` (every processor, in clock
/// ticks): busy (user, nice, system, irq, softirq), stolen (by the hypervisor, from a
/// virtual machine whose host is shared), and all of it.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    steal: u64,
    total: u64,
    cpus: usize,
}

impl CpuTimes {
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        Some(CpuTimes {
            busy: user + nice + system + irq + softirq,
            steal,
            total: ticks.iter().sum(),
            cpus: lines.filter(|l| l.starts_with("cpu")).count(),
        })
    }

    /// The machine's CPU from `earlier` to this reading, `secs` apart.
    pub fn since(self, earlier: CpuTimes, secs: f64) -> Option<CpuUse> {
        let total = self.total.checked_sub(earlier.total).filter(|t| *t > 0)? as f64;
        let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / total;
        Some(CpuUse {
            busy_cpu_secs: share(self.busy, earlier.busy) * self.cpus as f64 * secs,
            steal_share: share(self.steal, earlier.steal),
        })
    }
}

/// The machine's CPU over a measurement: CPU-seconds busy (every process on it: the
/// broker and Postgres as much as the path measured), and the share of its processors'
/// time the hypervisor took (a run with much stolen is slower for it, not for the code).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub busy_cpu_secs: f64,
    pub steal_share: f64,
}

/// The peak resident set (`VmHWM`) of a process, or of this one.
pub fn peak_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    kib_field(&std::fs::read_to_string(path).ok()?, "VmHWM:")
}

/// Starts this process's peak resident set again from its current size (Linux
/// `clear_refs`), so a measurement's peak is its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The median (the upper one of an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The nearest-rank percentile `q` (0-100) of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A database made for one run: migrated, dropped by [`ScratchDb::drop`].
pub struct ScratchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
}

impl ScratchDb {
    pub async fn create(admin_url: &str, pool_size: u32) -> anyhow::Result<ScratchDb> {
        let suffix = Uuid::now_v7().simple().to_string();
        let name = format!("dhanman_bench_{}", &suffix[suffix.len() - 12..]);
        let admin = PgPool::connect(admin_url)
            .await
            .context("connecting to Postgres (DATABASE_URL)")?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("create database {name}")))
            .await?;
        admin.close().await;
        let url = database_url_for(admin_url, &name)?;
        // Sessions as the pipeline's processes open them.
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(crate::connect_options(&url)?)
            .await?;
        let db = ScratchDb {
            name,
            url,
            pool,
            admin_url: admin_url.to_string(),
        };
        if let Err(e) = crate::migrate(&db.pool).await {
            db.drop().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Closes the pool and drops the database (forcing out any other session).
    pub async fn drop(self) {
        self.pool.close().await;
        match PgPool::connect(&self.admin_url).await {
            Ok(admin) => {
                if let Err(e) = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {} with (force)",
                        self.name
                    )))
                    .await
                {
                    eprintln!("dropping the benchmark database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("dropping the benchmark database {}: {e}", self.name),
        }
    }
}

pub fn database_url_for(base: &str, db_name: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(base).context("DATABASE_URL is not a URL")?;
    url.set_path(db_name);
    Ok(url.to_string())
}

/// A topic prefix of the run's own: `bench.<12 hex>.`.
pub fn topic_prefix() -> String {
    let suffix = Uuid::now_v7().simple().to_string();
    format!("bench.{}.", &suffix[suffix.len() - 12..])
}

/// Deletes the topics and the (empty) consumer groups named with `prefix`, so a run leaves
/// the broker as it found it.
pub async fn drop_topics_and_groups(bootstrap: &str, prefix: &str) -> anyhow::Result<()> {
    let (topics, groups) = tokio::task::spawn_blocking({
        let (bootstrap, prefix) = (bootstrap.to_string(), prefix.to_string());
        move || -> anyhow::Result<(Vec<String>, Vec<String>)> {
            let probe: rdkafka::consumer::BaseConsumer =
                dhanman_plumbing::kafka::client_config(&bootstrap).create()?;
            let topics = dhanman_connectors::groups::topics(&probe)?
                .into_keys()
                .filter(|t| t.starts_with(&prefix))
                .collect();
            let groups = dhanman_connectors::groups::list(&probe)?
                .into_iter()
                .map(|g| g.group)
                .filter(|g| g.starts_with(&prefix))
                .collect();
            Ok((topics, groups))
        }
    })
    .await??;
    dhanman_connectors::kafka::delete_topics(bootstrap, &topics).await?;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        dhanman_plumbing::kafka::client_config(bootstrap).create()?;
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    // A group whose members have not timed out yet stays; the broker drops it once empty.
    let _ = admin
        .delete_groups(&names, &rdkafka::admin::AdminOptions::new())
        .await;
    Ok(())
}

/// An organization with its admin key, and `n` active customers, written directly (the
/// benchmark measures invoices, not customer creation).
pub async fn society(pool: &PgPool, n: usize) -> anyhow::Result<Society> {
    let org = dhanman_producers::orgs::create_organization(pool, "Benchmark Society", None)
        .await
        .map_err(|e| anyhow::anyhow!("creating the benchmark's organization: {e}"))?;
    let customers: Vec<Uuid> = (0..n.max(1)).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "insert into customers (id, organization_id, name, unit)
         select id, $1, 'Resident ' || n, 'U-' || n
           from unnest($2::uuid[]) with ordinality as u(id, n)",
    )
    .bind(org.organization_id)
    .bind(&customers)
    .execute(pool)
    .await?;
    Ok(Society {
        organization_id: org.organization_id,
        api_key: org.api_key,
        customers,
    })
}

pub struct Society {
    pub organization_id: Uuid,
    pub api_key: String,
    pub customers: Vec<Uuid>,
}

/// One number beside its raw limit.
pub struct Row {
    pub measure: String,
    pub value: f64,
    pub unit: &'static str,
    /// The raw limit it is compared with: (what, value).
    pub limit: Option<(String, f64)>,
}

impl Row {
    pub fn new(measure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            measure: measure.into(),
            value,
            unit,
            limit: None,
        }
    }

    pub fn against(mut self, limit: impl Into<String>, value: f64) -> Row {
        self.limit = Some((limit.into(), value));
        self
    }
}

/// What a path prints: the machine, a headline, the rows, notes; or, with `--json`, one
/// object with the path's fields (and `path`, `machine`, `notes`).
pub struct Report {
    pub path: &'static str,
    pub headline: String,
    pub rows: Vec<Row>,
    pub fields: Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(path: &'static str, headline: impl Into<String>) -> Report {
        Report {
            path,
            headline: headline.into(),
            rows: Vec::new(),
            fields: Map::new(),
            notes: Vec::new(),
        }
    }

    pub fn field(&mut self, name: &str, value: impl Serialize) {
        self.fields.insert(
            name.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("path".into(), self.path.into());
        object.insert(
            "machine".into(),
            serde_json::to_value(Machine::read()).unwrap_or(Value::Null),
        );
        object.extend(self.fields.clone());
        object.insert("notes".into(), self.notes.clone().into());
        Value::Object(object)
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        let m = Machine::read();
        println!();
        println!(
            "machine: {} cores (nproc {}), {:.1} GiB, {}",
            m.cores,
            m.nproc,
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.cpu
        );
        println!("dhanman bench {}: {}", self.path, self.headline);
        println!(
            "{:<34} {:>12} {:<9} {:<34} {:>12} {:>7}",
            "measure", "value", "unit", "raw limit", "limit", "ratio"
        );
        for r in &self.rows {
            let (name, limit, ratio) = match &r.limit {
                Some((name, v)) if *v > 0.0 => (
                    name.as_str(),
                    format_value(*v),
                    format!("{:.2}", r.value / v),
                ),
                Some((name, v)) => (name.as_str(), format_value(*v), "-".into()),
                None => ("", String::new(), String::new()),
            };
            println!(
                "{:<34} {:>12} {:<9} {:<34} {:>12} {:>7}",
                r.measure,
                format_value(r.value),
                r.unit,
                name,
                limit,
                ratio
            );
        }
        for note in &self.notes {
            println!("  {note}");
        }
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_pick_the_values_they_name() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn proc_fields_are_read_in_bytes() {
        let status = "Name:\tdhanman\nVmPeak:\t  2000 kB\nVmHWM:\t    1234 kB\n";
        assert_eq!(kib_field(status, "VmHWM:"), Some(1234 * 1024));
        assert_eq!(kib_field(status, "VmRSS:"), None);
        assert!(peak_rss_bytes(None).is_some_and(|b| b > 0));
    }
}
