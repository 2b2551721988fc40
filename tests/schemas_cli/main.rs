//! `dhanman schemas` as a CI job runs it: the real binary against the real `dhanman api`
//! (its embedded registry on a Postgres database of each test's own) over TCP, and against a
//! minimal registry served here that lacks the aggregate compatibility endpoint.
//! Needs `DATABASE_URL` (`make test` sets it); no broker.

// Test code: a failed unwrap is a failed test, and what it prints is for the reader.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dhanman_schemas::Catalog;
use serde_json::{Value, json};
use sqlx::{Executor, PgPool};
use tokio::process::{Child, Command};
use uuid::Uuid;

const INVOICE_CREATED: &str = "dhanman.sales.InvoiceCreated";
const BASIC_AUTH_ENV: &str = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO";

/// The registry user every embedded registry of these tests has (writes need one).
const EMBEDDED_USER_INFO: &str = "cli:dhr_schemas-cli-test";
const AS_USER: &[(&str, &str)] = &[(BASIC_AUTH_ENV, EMBEDDED_USER_INFO)];

// ------------------------------------------------------------------------------------------
// against the embedded registry

#[tokio::test]
async fn register_is_idempotent_and_list_shows_every_version() {
    let registry = EmbeddedRegistry::start().await;
    let url = registry.url.as_str();

    let first = dhanman(&["register", "--registry", url, "--json"], AS_USER).await;
    first.assert_code(0);
    let first = first.json();
    let catalog = Catalog::global();
    assert_eq!(
        first.len(),
        catalog.all().count(),
        "every compiled-in version"
    );
    assert!(
        first.iter().all(|r| r["status"] == "registered"),
        "{first:?}"
    );

    let second = dhanman(&["register", "--registry", url, "--json"], AS_USER).await;
    second.assert_code(0);
    let second = second.json();
    assert!(
        second.iter().all(|r| r["status"] == "already_registered"),
        "{second:?}"
    );
    let key = |r: &Value| (r["subject"].clone(), r["version"].clone(), r["id"].clone());
    assert_eq!(
        first.iter().map(key).collect::<Vec<_>>(),
        second.iter().map(key).collect::<Vec<_>>()
    );

    // The released copies are the same texts: nothing new either, and said so.
    let released = dhanman(
        &["register", "--registry", url, "--dir", "schemas/released"],
        AS_USER,
    )
    .await;
    released.assert_code(0);
    let invoice_subject = catalog.latest(INVOICE_CREATED).unwrap().subject();
    let v2 = first
        .iter()
        .find(|r| r["subject"] == invoice_subject.as_str() && r["version"] == 2)
        .expect("InvoiceCreated v2 registered as version 2");
    assert!(
        released.stdout.contains(&format!(
            "{invoice_subject} (sales/InvoiceCreated.v2.avsc): already registered as version 2, id {}",
            v2["id"]
        )),
        "{}",
        released.stdout
    );
    assert!(
        !released.stdout.contains(": registered"),
        "{}",
        released.stdout
    );

    let listed = dhanman(&["list", "--registry", url, "--json"], &[]).await;
    listed.assert_code(0);
    // Every subject is listed, the API's own (under its prefix) too; those aside:
    let listed: Vec<Value> = listed
        .json()
        .into_iter()
        .filter(|s| !s["subject"].as_str().unwrap().starts_with("api-own."))
        .collect();
    let names: std::collections::BTreeSet<&str> = catalog.all().map(|r| r.name.as_str()).collect();
    assert_eq!(listed.len(), names.len(), "one subject per record");
    for registration in &first {
        let subject = listed
            .iter()
            .find(|s| s["subject"] == registration["subject"])
            .unwrap_or_else(|| panic!("{} not listed", registration["subject"]));
        assert_eq!(subject["level"], "BACKWARD");
        assert!(
            subject["versions"]
                .as_array()
                .unwrap()
                .contains(&json!({"version": registration["version"], "id": registration["id"]})),
            "{subject}"
        );
    }
    let invoices = listed
        .iter()
        .find(|s| s["subject"] == invoice_subject.as_str())
        .unwrap();
    assert_eq!(invoices["versions"].as_array().unwrap().len(), 2);

    let human = dhanman(&["list", "--registry", url], &[]).await;
    human.assert_code(0);
    assert!(human.stdout.contains(&invoice_subject), "{}", human.stdout);

    registry.stop().await;
}

#[tokio::test]
async fn check_passes_for_unchanged_schemas() {
    let registry = EmbeddedRegistry::with_released().await;
    let url = registry.url.as_str();
    let catalog = Catalog::global();
    let subjects: std::collections::BTreeSet<String> = catalog.all().map(|r| r.subject()).collect();

    let checked = dhanman(
        &[
            "check",
            "--registry",
            url,
            "--dir",
            "schemas/avro",
            "--json",
        ],
        &[],
    )
    .await;
    checked.assert_code(0);
    let verdicts = checked.json();
    assert_eq!(verdicts.len(), catalog.all().count(), "one per file");
    let named: std::collections::BTreeSet<String> = verdicts
        .iter()
        .map(|v| v["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, subjects);
    for verdict in &verdicts {
        assert_eq!(verdict["compatible"], true, "{verdict}");
        assert_eq!(verdict["new_subject"], false, "{verdict}");
        assert_eq!(verdict["level"], "BACKWARD_TRANSITIVE", "{verdict}");
        assert_eq!(verdict["messages"], json!([]), "{verdict}");
    }

    // The compiled-in schemas, newest version of each record, in human form; the registry
    // found through DHANMAN_HTTP_ADDR, as for a local `dhanman api`.
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/schema-registry");
    let human = dhanman(&["check"], &[("DHANMAN_HTTP_ADDR", addr)]).await;
    human.assert_code(0);
    let ok_lines = human
        .stdout
        .lines()
        .filter(|l| l.starts_with("OK ") && l.contains("BACKWARD_TRANSITIVE"))
        .count();
    assert_eq!(ok_lines, subjects.len(), "{}", human.stdout);

    // Under a topic prefix every subject is another one, not registered yet.
    let prefixed = dhanman(
        &["check", "--registry", url, "--json"],
        &[("DHANMAN_TOPIC_PREFIX", "ci1.")],
    )
    .await;
    prefixed.assert_code(0);
    for verdict in prefixed.json() {
        assert!(
            verdict["subject"].as_str().unwrap().starts_with("ci1."),
            "{verdict}"
        );
        assert_eq!(verdict["new_subject"], true, "{verdict}");
        assert_eq!(verdict["compatible"], true, "{verdict}");
    }

    registry.stop().await;
}

/// Depends on the compatibility engine (`dhanman_registry::incompatibilities`) being real.
#[tokio::test]
async fn a_breaking_change_fails_and_names_the_field() {
    let registry = EmbeddedRegistry::with_released().await;
    let url = registry.url.as_str();
    let subject = Catalog::global().latest(INVOICE_CREATED).unwrap().subject();

    // A v3 that adds a field without a default: it cannot read what v1 and v2 wrote.
    let added = SchemaDir::invoice_created_v3(|fields| {
        fields.push(json!({"name": "building", "type": "string", "doc": "Building of the unit."}));
    });
    let checked = dhanman(&["check", "--registry", url, "--dir", added.arg()], &[]).await;
    checked.assert_code(1);
    let breaks = checked
        .stdout
        .lines()
        .find(|l| l.starts_with("BREAKS"))
        .unwrap_or_else(|| panic!("no BREAKS line:\n{}", checked.stdout));
    assert!(breaks.contains("BACKWARD_TRANSITIVE") && breaks.contains(&subject));
    assert!(checked.stdout.contains("building"), "{}", checked.stdout);

    let as_json = dhanman(
        &["check", "--registry", url, "--dir", added.arg(), "--json"],
        &[],
    )
    .await;
    as_json.assert_code(1);
    let verdict = &as_json.json()[0];
    assert_eq!(verdict["compatible"], false);
    assert!(
        verdict["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().contains("building")),
        "{verdict}"
    );

    // --level judges here, with the level asked for instead of the subject's.
    let none = dhanman(
        &[
            "check",
            "--registry",
            url,
            "--dir",
            added.arg(),
            "--level",
            "none",
        ],
        &[],
    )
    .await;
    none.assert_code(0);
    assert!(none.stdout.starts_with("OK     NONE"), "{}", none.stdout);
    let backward = dhanman(
        &[
            "check",
            "--registry",
            url,
            "--dir",
            added.arg(),
            "--level",
            "BACKWARD",
        ],
        &[],
    )
    .await;
    backward.assert_code(1);
    assert!(backward.stdout.contains("building"), "{}", backward.stdout);

    // A type change: the new schema's int cannot read the string v1 and v2 wrote.
    let retyped = SchemaDir::invoice_created_v3(|fields| {
        let field = fields
            .iter_mut()
            .find(|f| f["name"] == "invoice_number")
            .unwrap();
        field["type"] = json!("int");
    });
    let checked = dhanman(&["check", "--registry", url, "--dir", retyped.arg()], &[]).await;
    checked.assert_code(1);
    assert!(
        checked.stdout.contains("invoice_number"),
        "{}",
        checked.stdout
    );

    // The registry refuses it too (409), and nothing is added.
    let registered = dhanman(
        &["register", "--registry", url, "--dir", added.arg()],
        AS_USER,
    )
    .await;
    registered.assert_code(1);
    assert!(
        registered.stdout.contains("INCOMPATIBLE"),
        "{}",
        registered.stdout
    );
    let versions = dhanman(&["list", "--registry", url, "--json"], &[])
        .await
        .json();
    let invoices = versions
        .iter()
        .find(|s| s["subject"] == subject.as_str())
        .unwrap();
    assert_eq!(invoices["versions"].as_array().unwrap().len(), 2);

    registry.stop().await;
}

/// Writes to the embedded registry need a registry user: `register` without one is refused
/// (exit 2, naming the variable), with one it registers, and `dhanman registry users`
/// makes, lists and revokes them.
#[tokio::test]
async fn registering_needs_a_registry_user() {
    let registry = EmbeddedRegistry::start().await;
    let url = registry.url.as_str();
    let refused = dhanman(&["register", "--registry", url], &[]).await;
    refused.assert_code(2);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(BASIC_AUTH_ENV),
        "{}",
        refused.stderr
    );
    let users = |args: &'static [&'static str]| {
        let db = registry.db.url.clone();
        async move {
            Command::new(env!("CARGO_BIN_EXE_dhanman"))
                .args(["registry", "users"])
                .args(args)
                .env("DATABASE_URL", db)
                .output()
                .await
                .expect("run dhanman registry users")
        }
    };
    let added = users(&["add", "ci-publisher"]).await;
    assert!(added.status.success(), "{added:?}");
    let user_info = String::from_utf8(added.stdout).unwrap().trim().to_string();
    assert!(user_info.starts_with("ci-publisher:dhr_"), "{user_info}");
    let with_new = dhanman(
        &["register", "--registry", url, "--json"],
        &[(BASIC_AUTH_ENV, &user_info)],
    )
    .await;
    with_new.assert_code(0);
    let listed = users(&["list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "ci-publisher" && u["revoked_at"].is_null()),
        "{listed}"
    );
    assert!(users(&["revoke", "ci-publisher"]).await.status.success());
    let revoked = dhanman(
        &["register", "--registry", url, "--dir", "schemas/released"],
        &[(BASIC_AUTH_ENV, &user_info)],
    )
    .await;
    // Every version is registered already: a revoked user changes nothing, and is not
    // needed to find that out.
    revoked.assert_code(0);
    assert!(
        !revoked.stdout.contains(": registered"),
        "{}",
        revoked.stdout
    );
    registry.stop().await;
}

#[tokio::test]
async fn usage_connection_and_file_errors_exit_2() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());

    let unreachable = dhanman(&["check", "--registry", &nowhere], &[]).await;
    unreachable.assert_code(2);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the schema registry"),
        "{}",
        unreachable.stderr
    );
    assert!(unreachable.stdout.is_empty(), "{}", unreachable.stdout);

    let level = dhanman(
        &["check", "--registry", &nowhere, "--level", "SIDEWAYS"],
        &[],
    )
    .await;
    level.assert_code(2);
    assert!(level.stderr.contains("SIDEWAYS"), "{}", level.stderr);

    let url = dhanman(&["list", "--registry", "not a url"], &[]).await;
    url.assert_code(2);
    assert!(url.stderr.contains("is not a URL"), "{}", url.stderr);

    let missing = dhanman(
        &[
            "check",
            "--registry",
            &nowhere,
            "--dir",
            "/nonexistent/schemas",
        ],
        &[],
    )
    .await;
    missing.assert_code(2);
    assert!(
        missing.stderr.contains("/nonexistent/schemas"),
        "{}",
        missing.stderr
    );

    let broken = SchemaDir::with_file("sales/InvoiceCreated.v3.avsc", "{ not json");
    let unreadable = dhanman(
        &["register", "--registry", &nowhere, "--dir", broken.arg()],
        &[],
    )
    .await;
    unreadable.assert_code(2);
    assert!(
        unreadable.stderr.contains("InvoiceCreated.v3.avsc"),
        "{}",
        unreadable.stderr
    );

    let subject = dhanman(
        &[
            "check",
            "--registry",
            &nowhere,
            "--subject",
            "no-such-subject",
        ],
        &[],
    )
    .await;
    subject.assert_code(2);
    assert!(
        subject.stderr.contains("no-such-subject"),
        "{}",
        subject.stderr
    );
}

// ------------------------------------------------------------------------------------------
// against a registry without the aggregate endpoint

#[tokio::test]
async fn without_the_aggregate_endpoint_each_version_is_checked() {
    let subject = Catalog::global().latest(INVOICE_CREATED).unwrap().subject();
    let fake = FakeRegistry::serve(FakeOptions {
        level: "BACKWARD_TRANSITIVE",
        ..FakeOptions::default()
    })
    .await;

    // Transitive: every version, and the one the fake calls breaking is reported.
    let checked = dhanman(
        &["check", "--registry", &fake.url, "--subject", &subject],
        &[],
    )
    .await;
    checked.assert_code(1);
    assert!(
        checked.stdout.starts_with("BREAKS BACKWARD_TRANSITIVE"),
        "{}",
        checked.stdout
    );
    assert!(
        checked
            .stdout
            .contains(&format!("version 2: {FAKE_REASON}")),
        "{}",
        checked.stdout
    );
    assert_eq!(fake.hits().per_version, [1, 2, 3]);
    assert_eq!(fake.hits().aggregate, 1, "tried once");

    // Plain level: only the latest, which the fake finds compatible.
    let fake = FakeRegistry::serve(FakeOptions {
        level: "BACKWARD",
        plain_404: true,
        ..FakeOptions::default()
    })
    .await;
    let checked = dhanman(
        &[
            "check",
            "--registry",
            &fake.url,
            "--subject",
            &subject,
            "--json",
        ],
        &[],
    )
    .await;
    checked.assert_code(0);
    assert_eq!(
        checked.json(),
        [json!({
            "subject": subject,
            "level": "BACKWARD",
            "compatible": true,
            "new_subject": false,
            "messages": [],
            "source": "dhanman.sales.InvoiceCreated v2, compiled in",
        })]
    );
    assert_eq!(fake.hits().per_version, [3]);

    // Every local subject: the others are new (40401) and the aggregate endpoint, once known
    // missing, is not asked again.
    let fake = FakeRegistry::serve(FakeOptions {
        level: "BACKWARD_TRANSITIVE",
        ..FakeOptions::default()
    })
    .await;
    let all = dhanman(&["check", "--registry", &fake.url, "--json"], &[]).await;
    all.assert_code(1);
    let verdicts = all.json();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| v["new_subject"] == false)
            .count(),
        1
    );
    assert_eq!(fake.hits().aggregate, 1);
    assert_eq!(fake.hits().per_version, [1, 2, 3]);
}

#[tokio::test]
async fn basic_auth_from_the_environment_or_the_url() {
    let subject = Catalog::global().latest(INVOICE_CREATED).unwrap().subject();
    let fake = FakeRegistry::serve(FakeOptions {
        level: "BACKWARD",
        // ci:p@ss
        basic_auth: Some("Basic Y2k6cEBzcw=="),
        ..FakeOptions::default()
    })
    .await;
    let check = |env: &'static [(&'static str, &'static str)], url: String| {
        let subject = subject.clone();
        async move { dhanman(&["check", "--registry", &url, "--subject", &subject], env).await }
    };

    let refused = check(&[], fake.url.clone()).await;
    refused.assert_code(2);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(BASIC_AUTH_ENV),
        "{}",
        refused.stderr
    );

    let wrong = check(&[(BASIC_AUTH_ENV, "ci:guess")], fake.url.clone()).await;
    wrong.assert_code(2);

    let from_env = check(&[(BASIC_AUTH_ENV, "ci:p@ss")], fake.url.clone()).await;
    from_env.assert_code(0);
    assert!(
        from_env.stdout.starts_with("OK     BACKWARD"),
        "{}",
        from_env.stdout
    );

    let in_url = fake.url.replace("http://", "http://ci:p%40ss@");
    let from_url = check(&[], in_url.clone()).await;
    from_url.assert_code(0);
    assert!(
        !from_url.stdout.contains("p%40ss") && !from_url.stdout.contains("p@ss"),
        "credentials shown: {}",
        from_url.stdout
    );
    assert_eq!(fake.hits().per_version, [3, 3]);
}

// ------------------------------------------------------------------------------------------
// fixtures

/// What `dhanman schemas ...` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn assert_code(&self, expected: i32) {
        assert_eq!(
            self.code, expected,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    #[track_caller]
    fn json(&self) -> Vec<Value> {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not a JSON array ({e}):\n{}", self.stdout))
    }
}

/// Runs `dhanman schemas <args>` from the repository root, with none of the caller's registry
/// settings.
async fn dhanman(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_dhanman"))
        .arg("schemas")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SCHEMA_REGISTRY_URL")
        .env_remove(BASIC_AUTH_ENV)
        .env_remove("DHANMAN_TOPIC_PREFIX")
        .env_remove("DHANMAN_HTTP_ADDR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run dhanman schemas");
    Run {
        code: output.status.code().expect("dhanman exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `dhanman api` on a database of its own; its embedded registry at `url`.
struct EmbeddedRegistry {
    db: TestDb,
    api: Child,
    url: String,
}

impl EmbeddedRegistry {
    async fn start() -> EmbeddedRegistry {
        let db = TestDb::new().await;
        let pool = PgPool::connect(&db.url)
            .await
            .expect("connect to test database");
        let (user, secret) = EMBEDDED_USER_INFO.split_once(':').unwrap();
        sqlx::query(
            "insert into schema_registry_users (name, secret_hash)
             values ($1, sha256(convert_to($2, 'UTF8')))",
        )
        .bind(user)
        .bind(secret)
        .execute(&pool)
        .await
        .expect("the registry user");
        pool.close().await;
        let port = free_port();
        // The API registers the local schemas for its own topics at start; under another
        // prefix, so that the subjects these tests register start out new.
        let api = Command::new(env!("CARGO_BIN_EXE_dhanman"))
            .arg("api")
            .env("DHANMAN_TOPIC_PREFIX", "api-own.")
            .env("DATABASE_URL", &db.url)
            .env("DHANMAN_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("SCHEMA_REGISTRY_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn dhanman api");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dhanman api at {base} never ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        EmbeddedRegistry {
            db,
            api,
            url: format!("{base}/schema-registry"),
        }
    }

    /// The released versions registered, at the level the project promises.
    async fn with_released() -> EmbeddedRegistry {
        let registry = Self::start().await;
        dhanman(
            &[
                "register",
                "--registry",
                &registry.url,
                "--dir",
                "schemas/released",
            ],
            AS_USER,
        )
        .await
        .assert_code(0);
        let (user, secret) = EMBEDDED_USER_INFO.split_once(':').unwrap();
        let set = reqwest::Client::new()
            .put(format!("{}/config", registry.url))
            .basic_auth(user, Some(secret))
            .header(
                header::CONTENT_TYPE,
                "application/vnd.schemaregistry.v1+json",
            )
            .body(r#"{"compatibility": "BACKWARD_TRANSITIVE"}"#)
            .send()
            .await
            .unwrap();
        assert!(set.status().is_success(), "{:?}", set.text().await);
        registry
    }

    async fn stop(mut self) {
        let _ = self.api.kill().await;
        self.db.drop_db().await;
    }
}

/// A database of its own, migrated; dropped by [`TestDb::drop_db`] at the end of a passing
/// test (as in `tests/pipeline/helpers.rs`).
struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let admin_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL is not set: run the tests with `make test` (it starts Postgres)");
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
        let mut url = reqwest::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to test database");
        dhanman_ops::MIGRATOR.run(&pool).await.expect("migrate");
        pool.close().await;
        TestDb {
            name,
            url,
            admin_url,
        }
    }

    async fn drop_db(self) {
        if let Ok(admin) = PgPool::connect(&self.admin_url).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {} with (force)",
                    self.name
                )))
                .await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory of schema files, removed when dropped.
struct SchemaDir {
    path: PathBuf,
}

impl SchemaDir {
    fn with_file(relative: &str, text: &str) -> SchemaDir {
        let path =
            std::env::temp_dir().join(format!("dhanman-schemas-{}", Uuid::new_v4().simple()));
        let file = path.join(relative);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        SchemaDir { path }
    }

    /// `sales/InvoiceCreated.v3.avsc`: the released v2 with its fields changed by `change`.
    fn invoice_created_v3(change: impl FnOnce(&mut Vec<Value>)) -> SchemaDir {
        let v2 =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro/sales/InvoiceCreated.v2.avsc");
        let mut schema: Value =
            serde_json::from_str(&std::fs::read_to_string(v2).unwrap()).unwrap();
        change(schema["fields"].as_array_mut().unwrap());
        SchemaDir::with_file(
            "sales/InvoiceCreated.v3.avsc",
            &serde_json::to_string_pretty(&schema).unwrap(),
        )
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for SchemaDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What the fake registry says about version 2 under the InvoiceCreated subject.
const FAKE_REASON: &str = "/fields/8: field 'amount': the fake says no";

#[derive(Clone, Default)]
struct FakeOptions {
    level: &'static str,
    /// The aggregate endpoint's 404 as a bare proxy would send it, not Confluent's JSON.
    plain_404: bool,
    /// The `Authorization` header every request must carry.
    basic_auth: Option<&'static str>,
}

#[derive(Debug, Default, Clone)]
struct Hits {
    aggregate: usize,
    /// Versions checked through `/compatibility/subjects/{s}/versions/{v}`, in order.
    per_version: Vec<i64>,
}

#[derive(Clone)]
struct Fake {
    options: FakeOptions,
    hits: Arc<Mutex<Hits>>,
}

/// A registry with one subject (InvoiceCreated's, versions 1 to 3) that serves only the
/// level, the versions and the per-version check, whose verdict is fixed: version 2 breaks.
struct FakeRegistry {
    url: String,
    hits: Arc<Mutex<Hits>>,
}

impl FakeRegistry {
    async fn serve(options: FakeOptions) -> FakeRegistry {
        let hits = Arc::new(Mutex::new(Hits::default()));
        let fake = Fake {
            options,
            hits: hits.clone(),
        };
        let routes = Router::new()
            .route("/config/{subject}", get(fake_config))
            .route("/subjects/{subject}/versions", get(fake_versions))
            .route("/subjects/{subject}/versions/{version}", get(fake_version))
            .route(
                "/compatibility/subjects/{subject}/versions",
                post(fake_aggregate),
            )
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post(fake_check),
            )
            .fallback(|| async { not_found(404, "HTTP 404 Not Found") })
            .layer(middleware::from_fn_with_state(fake.clone(), fake_auth))
            .with_state(fake);
        let app = Router::new().nest("/sr", routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sr/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeRegistry { url, hits }
    }

    fn hits(&self) -> Hits {
        self.hits.lock().unwrap().clone()
    }
}

fn not_found(code: u32, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

fn is_invoices(subject: &str) -> bool {
    subject == Catalog::global().latest(INVOICE_CREATED).unwrap().subject()
}

async fn fake_auth(State(fake): State<Fake>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match fake.options.basic_auth {
        Some(expected) if given != Some(expected) => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error_code": 401, "message": "Unauthorized"})),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

async fn fake_config(State(fake): State<Fake>) -> Response {
    axum::Json(json!({"compatibilityLevel": fake.options.level})).into_response()
}

async fn fake_versions(UrlPath(subject): UrlPath<String>) -> Response {
    match is_invoices(&subject) {
        true => axum::Json(json!([1, 2, 3])).into_response(),
        false => not_found(40401, &format!("Subject '{subject}' not found.")),
    }
}

async fn fake_version(UrlPath((subject, version)): UrlPath<(String, i64)>) -> Response {
    let text = Catalog::global().latest(INVOICE_CREATED).unwrap().text;
    axum::Json(json!({"subject": subject, "version": version, "id": 100 + version, "schema": text}))
        .into_response()
}

async fn fake_aggregate(State(fake): State<Fake>) -> Response {
    fake.hits.lock().unwrap().aggregate += 1;
    match fake.options.plain_404 {
        true => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
        false => not_found(404, "HTTP 404 Not Found"),
    }
}

async fn fake_check(
    State(fake): State<Fake>,
    UrlPath((subject, version)): UrlPath<(String, i64)>,
    body: String,
) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    assert!(request["schema"].is_string(), "{request}");
    assert!(is_invoices(&subject));
    fake.hits.lock().unwrap().per_version.push(version);
    let verdict = match version {
        2 => json!({"is_compatible": false, "messages": [FAKE_REASON]}),
        _ => json!({"is_compatible": true, "messages": []}),
    };
    axum::Json(verdict).into_response()
}
