//! Test fixtures: a fresh database and topic namespace per test, the real `dhanman`
//! binary as child processes, typed HTTP helpers, and a TCP proxy that can cut Postgres
//! off. Everything talks over real sockets to the real Postgres and broker that
//! `scripts/dev-services.sh` starts.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dhanman_schemas::events::{Envelope, InvoiceCreated, PaymentReceived};
use dhanman_schemas::{Codec, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::{Executor, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,rdkafka=warn,sqlx=warn")
                .with_test_writer()
                .try_init();
        }
    });
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `make test` (it starts Postgres and the broker)"
        )
    })
}

pub fn bootstrap() -> String {
    env("KAFKA_BOOTSTRAP_SERVERS")
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database of its own, migrated, dropped by [`TestDb::drop_db`] with the topics and
/// groups of every [`Setup`] made for it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
    /// The topic prefixes of the test's setups.
    prefixes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        init_tracing();
        let admin_url = env("DATABASE_URL");
        let name = format!(
            "dhanman_test_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = PgPool::connect(&admin_url)
            .await
            .expect("connect to Postgres");
        admin
            .execute(sqlx::AssertSqlSafe(format!("create database {name}")))
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to test database");
        dhanman_ops::MIGRATOR.run(&pool).await.expect("migrate");
        TestDb {
            name,
            url,
            pool,
            admin_url,
            prefixes: Arc::default(),
        }
    }

    /// Drops the database (after closing the pool), and deletes the topics and consumer
    /// groups of the test's setups from the broker; call at the end of a passing test.
    pub async fn drop_db(self) {
        let prefixes = self.prefixes.lock().expect("prefixes").clone();
        if let Err(e) = drop_topics_and_groups(&prefixes).await {
            eprintln!("cleaning up the broker after the test: {e}");
        }
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&self.admin_url).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {} with (force)",
                    self.name
                )))
                .await;
        }
    }

    /// Polls `sql` (a count) until it reaches `at_least`; a timeout names the last count.
    pub async fn wait_count(&self, what: &str, sql: &str, at_least: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let n = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(&self.pool)
                .await
                .map(|(n,)| n);
            if n.as_ref().is_ok_and(|n| *n >= at_least) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {at_least} wanted, last count {n:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .expect(sql);
        n
    }
}

/// Deletes the topics and consumer groups whose names start with one of `prefixes`.
async fn drop_topics_and_groups(prefixes: &[String]) -> dhanman_connectors::Result<()> {
    if prefixes.is_empty() {
        return Ok(());
    }
    let (topics, groups) = tokio::task::spawn_blocking({
        let prefixes = prefixes.to_vec();
        move || -> dhanman_connectors::Result<(Vec<String>, Vec<String>)> {
            let ours = |name: &str| prefixes.iter().any(|p| name.starts_with(p.as_str()));
            let probe: rdkafka::consumer::BaseConsumer =
                dhanman_plumbing::kafka::client_config(&bootstrap()).create()?;
            let topics = dhanman_connectors::groups::topics(&probe)?
                .into_keys()
                .filter(|t| ours(t))
                .collect();
            let groups = dhanman_connectors::groups::list(&probe)?
                .into_iter()
                .map(|g| g.group)
                .filter(|g| ours(g))
                .collect();
            Ok((topics, groups))
        }
    })
    .await
    .expect("the broker look-up task")?;
    dhanman_connectors::kafka::delete_topics(&bootstrap(), &topics).await?;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        dhanman_plumbing::kafka::client_config(&bootstrap()).create()?;
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    // A group whose members have not timed out yet is not empty and stays; the broker
    // drops it once it is empty and its offsets are gone with the topics.
    let _ = admin
        .delete_groups(&names, &rdkafka::admin::AdminOptions::new())
        .await;
    Ok(())
}

pub fn with_database(url: &str, name: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The consumer group as the broker's group coordinator describes it now.
pub async fn describe_group(group: &str) -> dhanman_connectors::groups::Group {
    dhanman_connectors::offsets::describe(&bootstrap(), group)
        .await
        .expect("describe the group")
}

/// Waits until the coordinator says `group` has no members (those that left, or whose
/// session timed out).
pub async fn wait_group_empty(group: &str, within: Duration) {
    eventually(&format!("group {group} to be empty"), within, || async {
        describe_group(group).await.members.is_empty().then_some(())
    })
    .await;
}

/// The API served in-process on a real socket, over the test's database; its base URL.
pub async fn serve_api(db: &TestDb) -> String {
    serve_state(api_state(db)).await
}

/// The state [`serve_api`] serves, to change before [`serve_state`].
pub fn api_state(db: &TestDb) -> dhanman_api::AppState {
    dhanman_api::AppState::new(db.pool.clone(), Duration::from_millis(300))
}

/// Serves `state` in-process on a port of its own; returns the base URL.
pub async fn serve_state(state: dhanman_api::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dhanman_api::serve(listener, state));
    format!("http://{addr}")
}

/// The Prometheus text of the test's `dhanman api` (or `up`).
pub async fn metrics_text(setup: &Setup) -> String {
    reqwest::get(format!("{}/metrics", setup.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// A new organization's administrator key.
pub async fn org_key(db: &TestDb, name: &str) -> String {
    dhanman_producers::orgs::create_organization(&db.pool, name, None)
        .await
        .unwrap()
        .api_key
}

/// A refusal: the status, a JSON body naming `field`, with an error code and a message.
pub fn assert_refused(reply: &Reply, status: u16, field: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["field"], field, "{}", reply.body);
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        reply.body
    );
    assert!(reply.body["error"].is_string(), "{}", reply.body);
}

/// A unique topic namespace for one test.
pub fn topic_prefix() -> String {
    format!("t{}.", &Uuid::new_v4().simple().to_string()[..10])
}

/// A `dhanman` child process with its stderr captured to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process has logged `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        eventually(
            &format!("{text:?} in {}", self.log.display()),
            within,
            || {
                let log = self.log_text();
                async move { log.contains(text).then_some(()) }
            },
        )
        .await;
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill child");
    }

    /// SIGTERM, as a service manager stops a process; waits up to a minute for it to exit
    /// and returns how it did.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.exited(Duration::from_secs(60)).await
    }

    /// Waits up to `within` for the process to exit and returns how it did.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("not exited within {within:?}: {}", self.log_text()))
            .expect("wait for the process")
    }
}

/// The process is killed; a passing test leaves no log behind, a failing one keeps the logs
/// of the processes it still held, for the reader.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// How a test runs the binary: the database, the topic namespace, the API address.
#[derive(Clone)]
pub struct Setup {
    pub database_url: String,
    pub topic_prefix: String,
    pub http_port: u16,
}

impl Setup {
    pub fn new(db: &TestDb) -> Setup {
        let topic_prefix = topic_prefix();
        db.prefixes
            .lock()
            .expect("prefixes")
            .push(topic_prefix.clone());
        Setup {
            database_url: db.url.clone(),
            topic_prefix,
            http_port: free_port(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn registry_url(&self) -> String {
        format!("{}/schema-registry", self.base_url())
    }

    pub fn topic(&self, logical: &str) -> String {
        format!("{}{logical}", self.topic_prefix)
    }

    /// Starts `dhanman <args>` against the test's database, broker and topics.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        self.spawn_with_env(args, &[])
    }

    /// Starts `args` with the setting `(variable, value)` and checks the process refuses
    /// it: it exits unsuccessfully and its log holds `named`.
    pub async fn refuses_to_start(&self, args: &[&str], setting: (&str, &str), named: &str) {
        let mut refused = self.spawn_with_env(args, &[setting]);
        let status = refused.exited(Duration::from_secs(30)).await;
        assert!(!status.success(), "{setting:?}: {status}");
        let log = refused.log_text();
        assert!(log.contains(named), "{log}");
    }

    /// Like [`Setup::spawn`], with variables added or overridden (e.g. `DATABASE_URL`).
    pub fn spawn_with_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "dhanman-{}-{}.log",
            args.join("-"),
            Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dhanman"))
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
            .env("DHANMAN_HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("DHANMAN_TOPIC_PREFIX", &self.topic_prefix)
            .env("DHANMAN_TOPIC_PARTITIONS", "4")
            .env_remove("SCHEMA_REGISTRY_URL")
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
            // No SMTP server is there unless a test starts one (and names it in `extra`):
            // notifications wait in the delivery log instead of being dead-lettered.
            .env("SMTP_URL", "smtp://127.0.0.1:9")
            .env("DHANMAN_SMTP_MAX_ATTEMPTS", "1000000")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn dhanman");
        Proc { child, log }
    }

    /// Waits until the API of a spawned process answers.
    pub async fn wait_ready(&self, proc: &Proc) {
        let url = format!("{}/readyz", self.base_url());
        let client = reqwest::Client::new();
        eventually(
            &format!("API at {url} (log: {})", proc.log.display()),
            Duration::from_secs(60),
            || {
                let client = client.clone();
                let url = url.clone();
                async move {
                    client
                        .get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    pub fn codec(&self) -> Codec {
        Codec::new(&self.registry_url())
            .expect("codec")
            .with_topic_prefix(&self.topic_prefix)
    }
}

/// `dhanman api` running (it serves the embedded registry processors decode with) and an
/// organization created through the CLI.
pub async fn api_with_org(setup: &Setup, name: &str) -> (Proc, Uuid) {
    let api = setup.spawn(&["api"]);
    setup.wait_ready(&api).await;
    let (org, _) = create_org(setup, name).await;
    (api, org)
}

/// The due date the fixtures give an invoice: the demo's and the benchmarks'
/// ([`dhanman_ops::calendar`], 20 days from today), so that no payment reminder falls due
/// while a test runs unless it asks for one (a `DHANMAN_REMINDER_DAYS_BEFORE` over 20), and
/// an invoice issued today is never refused for falling due before its issue.
pub fn due_date() -> chrono::NaiveDate {
    dhanman_ops::calendar::due_date()
}

/// An `InvoiceCreated` (v2 fields empty) issued 2026-12-01, due on [`due_date`].
pub fn invoice_created(org: Uuid, customer: Uuid, number: &str, amount: &str) -> InvoiceCreated {
    InvoiceCreated {
        envelope: Envelope::new(org, &format!("test-{number}"), None),
        invoice_id: Uuid::now_v7(),
        customer_id: customer,
        invoice_number: number.into(),
        amount: amount.parse().unwrap(),
        currency: "INR".into(),
        issue_date: "2026-12-01".parse().unwrap(),
        due_date: due_date(),
        description: None,
        period: None,
        tax_amount: None,
    }
}

/// A manual UPI payment of `cents` by `customer`.
pub fn payment(org: Uuid, customer: Uuid, cents: i64, correlation_id: &str) -> PaymentReceived {
    PaymentReceived {
        envelope: Envelope::new(org, correlation_id, None),
        payment_id: Uuid::now_v7(),
        invoice_id: None,
        customer_id: customer,
        amount: Decimal::new(cents, 2),
        currency: "INR".into(),
        method: "upi".into(),
        reference: None,
    }
}

/// Creates an invoice through the API, due on [`due_date`]; returns (invoice id,
/// consistency token).
pub async fn invoice(api: &Api, customer: Uuid, amount: &str) -> (String, String) {
    let r = api
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "amount": amount, "due_date": due_date(),
                   "issue_date": "2026-12-01"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["invoice_id"].as_str().unwrap().to_string(),
        r.body["consistency_token"].as_str().unwrap().to_string(),
    )
}

/// Command events in the outbox; the ledger's own announcements (which it writes in the
/// background whenever it posts) are left out.
pub async fn command_events(db: &TestDb) -> i64 {
    db.count("select count(*) from outbox where derived_from is null")
        .await
}

/// What a finished `dhanman` command printed.
pub struct CliRun {
    pub ok: bool,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Stdout as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

/// Runs `dhanman <args>` to completion against the test's database, broker, topics and
/// (for decoding) the registry of its API.
pub async fn dhanman(setup: &Setup, args: &[&str]) -> CliRun {
    dhanman_with_env(setup, args, &[]).await
}

/// How long a command run to completion may take before the test fails (and the process
/// is killed) instead of waiting for ever.
const COMMAND_WITHIN: Duration = Duration::from_secs(300);

/// [`dhanman`] with more variables set, or set otherwise.
pub async fn dhanman_with_env(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let output = Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .args(args)
        .env("DATABASE_URL", &setup.database_url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env("DHANMAN_TOPIC_PREFIX", &setup.topic_prefix)
        .env(
            "DHANMAN_HTTP_ADDR",
            format!("127.0.0.1:{}", setup.http_port),
        )
        .env_remove("SCHEMA_REGISTRY_URL")
        .env_remove("SMTP_URL")
        // Last, so that a test may set any of the above otherwise.
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_WITHIN, output)
        .await
        .unwrap_or_else(|_| panic!("dhanman {args:?} did not finish within {COMMAND_WITHIN:?}"))
        .expect("run dhanman");
    CliRun {
        ok: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Waits until the ledger has applied the event of a consistency `token` (a ledger process
/// started just before may still be joining its group: the API's own wait is shorter),
/// then returns the trial balance.
pub async fn ledger_applied(api: &Api, token: &str) -> Value {
    let path = format!("/v1/trial-balance?consistent_with={token}");
    eventually(
        &format!("the ledger to apply {token}"),
        Duration::from_secs(60),
        || {
            let (api, path) = (api.clone(), path.clone());
            async move {
                let r = api.get(&path).await;
                (r.status == 200).then_some(r.body)
            }
        },
    )
    .await
}

/// Runs `dhanman registry users add NAME` and returns the `name:secret` it prints.
pub async fn registry_user(setup: &Setup, name: &str) -> String {
    let run = dhanman(setup, &["registry", "users", "add", name]).await;
    assert!(run.ok, "{}", run.stderr);
    run.stdout.trim().to_string()
}

/// Runs `dhanman orgs create` and returns (organization id, admin key).
pub async fn create_org(setup: &Setup, name: &str) -> (Uuid, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .args(["orgs", "create", "--name", name])
        .env("DATABASE_URL", &setup.database_url)
        .output()
        .await
        .expect("run dhanman orgs create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    (
        created["organization_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        created["api_key"].as_str().unwrap().to_string(),
    )
}

/// A typed HTTP client for one organization.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
    /// The body's bytes as answered.
    pub text: String,
}

impl Reply {
    /// An answer read whole: its body parsed, or kept as a string when it is not JSON.
    pub async fn read(response: reqwest::Response) -> reqwest::Result<Reply> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone())),
            headers,
            text,
        })
    }
}

impl Api {
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.to_string(),
            key: key.to_string(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("HTTP request");
        Reply::read(response).await.expect("body")
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn customer(&self, name: &str) -> Uuid {
        let r = self
            .post(
                "/v1/customers",
                json!({"name": name, "email": "r@example.org"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().parse().unwrap()
    }
}

pub fn producer() -> FutureProducer {
    dhanman_plumbing::kafka::idempotent_producer(&bootstrap()).expect("producer")
}

pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// Produces many records pipelined, then waits for every acknowledgement.
pub async fn produce_all<'a>(
    producer: &FutureProducer,
    records: impl IntoIterator<Item = (String, &'a str, &'a [u8])>,
) {
    let mut pending = Vec::new();
    for (topic, key, value) in records {
        let mut record = FutureRecord::to(&topic).key(key).payload(value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery not canceled")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// A record read back from a topic.
#[derive(Debug)]
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// As text (bytes that are not UTF-8 read as U+FFFD).
    pub headers: Vec<(String, String)>,
    /// As written.
    pub header_bytes: Vec<(String, Vec<u8>)>,
}

impl Read {
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.header_bytes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `n` records of a topic from the beginning (a throwaway group), within a minute. A
/// topic the relay has not yet created is waited for: the consumer reports it unknown until
/// the first record makes it.
pub async fn read_topic(topic: &str, n: usize) -> Vec<Read> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let consumer: StreamConsumer = dhanman_plumbing::kafka::client_config(&bootstrap())
        .set("group.id", format!("test-reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => panic!("only {} of {n} records arrived on {topic}", out.len()),
            Ok(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            ))) => continue,
            Ok(m) => m.expect("consume"),
        };
        let header_bytes: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Read {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: header_bytes
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            header_bytes,
        });
    }
    out
}

/// A TCP proxy in front of Postgres that the test can cut (close every connection and
/// refuse new ones) and restore.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let target = target.to_string();
        {
            let (up, generation) = (up.clone(), generation.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let mut cut = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            });
        }
        Proxy {
            port,
            up,
            generation,
        }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// A DATABASE_URL that goes through the proxy.
    pub fn url(&self, database_url: &str) -> String {
        let mut url = reqwest::Url::parse(database_url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

/// The Postgres host:port of a DATABASE_URL.
pub fn pg_addr(database_url: &str) -> String {
    let url = reqwest::Url::parse(database_url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    )
}

/// Waits for the one dead letter of `topic` (the test's prefix added) and asserts it is
/// `value` byte for byte, refused (`rejected`) as belonging to another organization.
pub async fn assert_refused_as_another_organizations(setup: &Setup, topic: &str, value: &[u8]) {
    let dead = read_topic(&setup.topic(&topics::dlq(topic)), 1).await;
    assert_eq!(dead[0].header("dlq.error.class"), Some("rejected"));
    let reason = dead[0].header("dlq.error").unwrap_or_default();
    assert!(reason.contains("another organization"), "{reason}");
    assert_eq!(dead[0].payload, value);
}
