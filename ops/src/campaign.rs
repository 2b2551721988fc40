//! `dhanman campaign`: the fault campaign. The pipeline runs as separate processes (two API
//! processes, two relays, two of each processor) on a database and a topic namespace of its
//! own, under a steady load of commands through both APIs; each round kills one process
//! with SIGKILL at a random moment (or restarts Postgres or the Kafka broker) and starts it
//! again. At the end it checks the books against the commands the load generator saw
//! acknowledged: none lost, none applied twice, no email sent twice, the ledger auditor
//! clean, and prints one summary line. `scripts/fault-campaign.sh` runs it.

mod check;
mod load;
mod procs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

use procs::Fleet;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Rounds of faults.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Commands per second the load generator sends (spread over both APIs).
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Seeds the choice of faults, victims and moments (the same seed, the same campaign).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Restart the Kafka broker in some rounds (it must be the one `scripts/dev-services.sh`
    /// started: `scripts/stop-dev-services.sh` and `scripts/dev-services.sh` restart it).
    #[arg(long)]
    pub broker_faults: bool,
    /// Restart Postgres in some rounds (the machine's cluster, with `pg_ctlcluster`).
    #[arg(long)]
    pub postgres_faults: bool,
    /// Brokers of the cluster `scripts/dev-services.sh` runs (`DHANMAN_KAFKA_NODES`): with
    /// 3, the topics get three replicas, and a broker fault kills one node with SIGKILL
    /// (the active controller the first time) and starts it again.
    #[arg(long, default_value_t = 1)]
    pub kafka_nodes: u32,
    /// Keep the campaign's database and logs afterwards.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub database_url: crate::DatabaseUrl,
    #[command(flatten)]
    pub kafka_bootstrap_servers: crate::KafkaBootstrapServers,
}

/// What one round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    RestartPostgres,
    RestartBroker,
}

impl Fault {
    /// Round `round`'s fault (from 0): mostly kills; the third round and every fourth after
    /// it restart the broker, the sixth and every sixth after it Postgres, when those faults
    /// are asked for, so that even a three-round campaign meets a broker restart.
    fn of(round: u32, args: &Args) -> Fault {
        if args.broker_faults && round % 4 == 2 {
            Fault::RestartBroker
        } else if args.postgres_faults && round % 6 == 5 {
            Fault::RestartPostgres
        } else {
            Fault::Kill
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let id = Uuid::now_v7().simple().to_string();
    let id = &id[id.len() - 10..];
    let db_name = format!("dhanman_campaign_{id}");
    let admin = PgPool::connect(args.database_url.expose_secret())
        .await
        .with_context(|| format!("connecting to Postgres ({})", crate::DATABASE_URL.names()))?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("create database {db_name}")))
        .await?;
    admin.close().await;
    let mut url = reqwest::Url::parse(args.database_url.expose_secret())
        .with_context(|| crate::DATABASE_URL.names())?;
    url.set_path(&db_name);
    let database_url = url.to_string();
    let dir = std::env::temp_dir().join(format!("dhanman-campaign-{id}"));
    std::fs::create_dir_all(&dir)?;
    let outcome = campaign(&args, &database_url, &format!("campaign{id}."), &dir).await;
    if !args.keep {
        if let Ok(admin) = PgPool::connect(args.database_url.expose_secret()).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {db_name} with (force)"
                )))
                .await;
        }
        if outcome.as_ref().is_ok_and(|s| s.clean()) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let summary = outcome?;
    println!("{summary}");
    if !summary.clean() {
        bail!(
            "the campaign found faults in the books; logs in {}",
            dir.display()
        );
    }
    Ok(())
}

async fn campaign(
    args: &Args,
    database_url: &str,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<check::Summary> {
    let pool = PgPool::connect(database_url).await?;
    crate::migrate(&pool).await?;
    let org = dhanman_producers::orgs::create_organization(&pool, "Campaign Society", None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The peers the pipeline talks to, in this process: a payment gateway and an SMTP
    // server that keeps every message it accepts.
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_url = format!("http://{}", gateway.local_addr()?);
    tokio::spawn(dhanman_devpeers::serve(
        gateway,
        dhanman_devpeers::Switches::default(),
    ));
    let smtp = dhanman_devpeers::smtp::SmtpSink::start().await?;
    let mut fleet = Fleet::new(procs::Shared {
        replicas: if args.kafka_nodes > 1 { 3 } else { 1 },
        binary: std::env::current_exe()?,
        database_url: database_url.to_string(),
        bootstrap: args.kafka_bootstrap_servers.to_string(),
        prefix: prefix.to_string(),
        gateway_url,
        smtp_url: smtp.url(),
        dir: dir.to_path_buf(),
    });
    fleet.start_all().await?;
    fleet.wait_ready().await?;

    let load = load::Load::start(load::Target {
        apis: fleet.api_urls(),
        key: org.api_key.clone(),
        rate: args.rate,
        seed: args.seed,
    });
    let mut rng = StdRng::seed_from_u64(args.seed);
    for round in 0..args.rounds {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..6_000))).await;
        match Fault::of(round, args) {
            Fault::Kill => {
                let victim = fleet.pick(&mut rng);
                eprintln!("round {}: SIGKILL {victim}", round + 1);
                fleet.kill(&victim).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
                fleet.start(&victim).await?;
            }
            Fault::RestartPostgres => {
                eprintln!("round {}: restarting Postgres", round + 1);
                restart_postgres().await?;
            }
            Fault::RestartBroker if args.kafka_nodes > 1 => {
                let node = if round < 4 {
                    controller(&args.kafka_bootstrap_servers).await?
                } else {
                    rng.random_range(1..=args.kafka_nodes)
                };
                eprintln!("round {}: SIGKILL Kafka node {node}", round + 1);
                kill_broker_node(node).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..5_000))).await;
                cluster_up().await?;
            }
            Fault::RestartBroker => {
                eprintln!("round {}: restarting the Kafka broker", round + 1);
                restart_broker().await?;
            }
        }
    }
    // The load runs a little longer after the last fault, then stops; the pipeline settles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = load.stop().await;
    eprintln!(
        "load stopped: {} commands acknowledged; waiting for the pipeline to settle",
        acked.commands.len()
    );
    check::settle(
        &pool,
        &args.kafka_bootstrap_servers,
        prefix,
        &fleet.api_urls()[0],
    )
    .await?;
    let summary = check::books(&pool, args.rounds, &acked, &smtp, &fleet.gateway_url()).await?;
    fleet.stop_all().await;
    pool.close().await;
    Ok(summary)
}

fn scripts() -> PathBuf {
    // The binary runs from the repository (cargo run, or target/), whose scripts restart
    // the services; DHANMAN_SCRIPTS names them otherwise.
    std::env::var_os("DHANMAN_SCRIPTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts"),
        PathBuf::from,
    )
}

async fn run_script(name: &str, args: &[&str]) -> anyhow::Result<()> {
    // The scripts start what is theirs to start only when not pointed at a broker; the
    // campaign restarts Kafka alone, never RabbitMQ.
    let status = tokio::process::Command::new(scripts().join(name))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("DHANMAN_RABBITMQ", "off")
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running scripts/{name}"))?;
    if !status.success() {
        bail!("scripts/{name} {args:?} failed: {status}");
    }
    Ok(())
}

/// Stops the development broker (a controlled shutdown), and starts it again.
async fn restart_broker() -> anyhow::Result<()> {
    run_script("stop-dev-services.sh", &[]).await?;
    run_script("dev-services.sh", &[]).await
}

/// The node id of the cluster's active controller (`kafka-metadata-quorum`'s LeaderId).
async fn controller(bootstrap: &str) -> anyhow::Result<u32> {
    let output = tokio::process::Command::new(scripts().join("kafka-tools.sh"))
        .args([
            "metadata-quorum",
            "--bootstrap-server",
            bootstrap,
            "describe",
            "--status",
        ])
        .output()
        .await
        .context("kafka-metadata-quorum")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LeaderId:")?.trim().parse().ok())
        .context("kafka-metadata-quorum named no leader")
}

/// SIGKILL of one node of the three-node development cluster.
async fn kill_broker_node(node: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(scripts().join("stop-dev-services.sh"))
        .args(["--node", &node.to_string(), "--kill"])
        .env("DHANMAN_KAFKA_NODES", "3")
        .env("DHANMAN_RABBITMQ", "off")
        .status()
        .await?;
    if !status.success() {
        bail!("killing Kafka node {node} failed: {status}");
    }
    Ok(())
}

/// Starts the cluster's missing node(s) again.
async fn cluster_up() -> anyhow::Result<()> {
    let status = tokio::process::Command::new(scripts().join("dev-services.sh"))
        .env("DHANMAN_KAFKA_NODES", "3")
        .env("DHANMAN_RABBITMQ", "off")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("starting the Kafka cluster again failed: {status}");
    }
    Ok(())
}

/// Restarts the machine's Postgres cluster on port 5432 (fast shutdown: every connection
/// is cut, as in a crash of the server process).
async fn restart_postgres() -> anyhow::Result<()> {
    let clusters = tokio::process::Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .await
        .context("pg_lsclusters")?;
    let text = String::from_utf8_lossy(&clusters.stdout);
    let (version, name) = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() >= 3 && cols[2] == "5432")
        .map(|cols| (cols[0].to_string(), cols[1].to_string()))
        .context("no Postgres cluster on port 5432 to restart")?;
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            &name,
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .await
        .context("pg_ctlcluster restart")?;
    if !status.success() {
        bail!("pg_ctlcluster {version} {name} restart failed: {status}");
    }
    Ok(())
}
