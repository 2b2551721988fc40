//! `dhanman schemas`: the local Avro contracts against a Confluent-compatible schema registry,
//! for CI. `check` says whether each local schema may join its subject, `register` adds them,
//! `list` shows what the registry holds.
//!
//! Exit codes tell "fix the schema" from "fix the job": 0 every schema is compatible, 1 some
//! schema breaks its subject (or was refused as incompatible), 2 anything else: usage,
//! unreadable schema files, a registry that cannot be reached or answers an error.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use dhanman_registry::{CompatibilityLevel, ParsedSchema};
use dhanman_schemas::{Catalog, topics};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

/// Confluent's media type, sent as `Accept` and as the `Content-Type` of bodies.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// `user:password`, under the name Confluent's tools use for it.
const BASIC_AUTH_ENV: &str = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO";

mod registry;
use registry::Registry;
pub use registry::embedded_registry_url;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Checks each local schema against its subject in the registry: 0 all compatible, 1 a
    /// break, 2 an error.
    Check(CheckArgs),
    /// Registers each local schema, oldest version first; registering twice changes nothing.
    Register(RegisterArgs),
    /// Subjects in the registry with their versions, ids and compatibility levels.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    local: LocalArgs,
    /// Judge with this level (NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, ...) instead of
    /// the subject's; the check then runs here, against the versions' texts.
    #[arg(long, value_parser = parse_level)]
    level: Option<CompatibilityLevel>,
    /// An array of {subject, level, compatible, new_subject, messages, source}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    local: LocalArgs,
    /// An array of {subject, source, status, version, id, messages}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// An array of {subject, level, versions: [{version, id}]}.
    #[arg(long)]
    json: bool,
}

/// Where the registry is. Credentials: in the URL (`http://user:pass@host/`), else
/// `SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=user:password`.
#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// Schema registry URL; unset means the registry embedded in the dhanman API, at
    /// http://<DHANMAN_HTTP_ADDR>/schema-registry. Basic auth: http://user:pass@host/, or
    /// SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=user:password.
    #[arg(long = "registry", env = "SCHEMA_REGISTRY_URL", hide_env_values = true)]
    url: Option<String>,
    /// Address of the dhanman API whose embedded registry is the default.
    #[arg(long, env = "DHANMAN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
}

/// Which local schemas, and under which subjects.
#[derive(Debug, clap::Args)]
struct LocalArgs {
    /// Every .avsc under this directory (`<Name>.avsc` is version 1, `<Name>.vN.avsc` version
    /// N) instead of the schemas compiled into this binary; records map to topics through the
    /// catalog.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only this subject; repeat for several.
    #[arg(long = "subject", value_name = "SUBJECT")]
    subjects: Vec<String>,
    /// Prefix of every topic name, hence of every subject.
    #[arg(long, env = "DHANMAN_TOPIC_PREFIX", default_value = "", value_parser = crate::settings::topic_prefix)]
    topic_prefix: String,
}

fn parse_level(raw: &str) -> Result<CompatibilityLevel, String> {
    CompatibilityLevel::parse(raw).map_err(|e| e.to_string())
}

/// Runs one `dhanman schemas` command; prints results on stdout, errors on stderr.
pub async fn run(args: Args) -> ExitCode {
    let result = match args.command {
        Command::Check(args) => check(args).await,
        Command::Register(args) => register(args).await,
        Command::List(args) => list(args).await,
    };
    match result {
        Ok(Outcome::Compatible) => ExitCode::SUCCESS,
        Ok(Outcome::Breaks) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

enum Outcome {
    Compatible,
    Breaks,
}

impl Outcome {
    fn of(all_compatible: bool) -> Self {
        match all_compatible {
            true => Self::Compatible,
            false => Self::Breaks,
        }
    }
}

// ------------------------------------------------------------------------------------------
// check

/// The verdict on one local schema.
#[derive(Debug, Serialize)]
struct Verdict {
    subject: String,
    level: &'static str,
    compatible: bool,
    /// The registry has no version under the subject yet: anything may join it.
    new_subject: bool,
    messages: Vec<String>,
    /// The file (relative to `--dir`) or the compiled-in record version checked.
    source: String,
}

async fn check(args: CheckArgs) -> anyhow::Result<Outcome> {
    let registry = Registry::new(&args.registry)?;
    let locals = local_schemas(&args.local, Versions::Newest)?;
    let mut checker = Checker {
        registry: &registry,
        aggregate_endpoint: true,
    };
    let mut verdicts = Vec::new();
    for local in &locals {
        let verdict = checker.check(local, args.level).await?;
        if !args.json {
            print_verdict(&verdict);
        }
        verdicts.push(verdict);
    }
    let breaks = verdicts.iter().filter(|v| !v.compatible).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdicts)?);
    } else {
        let new = verdicts.iter().filter(|v| v.new_subject).count();
        println!(
            "{} schema(s) checked against {}: {} compatible ({new} new), {breaks} breaking",
            verdicts.len(),
            registry.display,
            verdicts.len() - breaks,
        );
    }
    Ok(Outcome::of(breaks == 0))
}

fn print_verdict(verdict: &Verdict) {
    let word = match (verdict.compatible, verdict.new_subject) {
        (true, true) => "NEW",
        (true, false) => "OK",
        (false, _) => "BREAKS",
    };
    println!(
        "{word:<6} {:<19} {}  ({})",
        verdict.level, verdict.subject, verdict.source
    );
    for message in &verdict.messages {
        println!("    {message}");
    }
}

struct Checker<'a> {
    registry: &'a Registry,
    /// Cleared once the registry turns out to lack `POST /compatibility/subjects/{s}/versions`,
    /// so the other subjects go straight to the per-version checks.
    aggregate_endpoint: bool,
}

impl Checker<'_> {
    async fn check(
        &mut self,
        local: &LocalSchema,
        forced: Option<CompatibilityLevel>,
    ) -> anyhow::Result<Verdict> {
        let subject = &local.subject;
        let level = match forced {
            Some(level) => level,
            None => self.registry.level(subject).await?,
        };
        let mut verdict = Verdict {
            subject: subject.clone(),
            level: level.as_str(),
            compatible: true,
            new_subject: false,
            messages: Vec::new(),
            source: local.source.clone(),
        };
        let Some(versions) = self.registry.versions(subject).await? else {
            verdict.new_subject = true;
            return Ok(verdict);
        };
        let messages = match forced {
            Some(level) => self.judge_here(local, level, &versions).await?,
            None => match self.judge_by_subject(local).await? {
                Some(messages) => messages,
                None => self.judge_by_version(local, level, &versions).await?,
            },
        };
        verdict.compatible = messages.is_empty();
        verdict.messages = messages;
        Ok(verdict)
    }

    /// Confluent's own check as registration would run it; `None` when the registry lacks
    /// the endpoint.
    async fn judge_by_subject(
        &mut self,
        local: &LocalSchema,
    ) -> anyhow::Result<Option<Vec<String>>> {
        if !self.aggregate_endpoint {
            return Ok(None);
        }
        let reply = self
            .registry
            .call(
                Method::POST,
                &["compatibility", "subjects", &local.subject, "versions"],
                &[("verbose", "true")],
                Some(&json!({ "schema": local.text })),
            )
            .await?;
        if reply.lacks_endpoint() {
            self.aggregate_endpoint = false;
            return Ok(None);
        }
        let body = reply.json(&format!("checking {}", local.subject))?;
        Ok(Some(compatibility_messages(&body, None)?))
    }

    /// One check per version the level involves (the latest, or all for transitive levels),
    /// each by the registry in the direction of the subject's level.
    async fn judge_by_version(
        &self,
        local: &LocalSchema,
        level: CompatibilityLevel,
        versions: &[i64],
    ) -> anyhow::Result<Vec<String>> {
        let chosen = versions_for(level, versions);
        let mut messages = Vec::new();
        for version in chosen {
            let version_text = version.to_string();
            let reply = self
                .registry
                .call(
                    Method::POST,
                    &[
                        "compatibility",
                        "subjects",
                        &local.subject,
                        "versions",
                        &version_text,
                    ],
                    &[("verbose", "true")],
                    Some(&json!({ "schema": local.text })),
                )
                .await?;
            let body = reply.json(&format!(
                "checking {} against version {version}",
                local.subject
            ))?;
            let label = (chosen.len() > 1).then_some(*version);
            messages.extend(compatibility_messages(&body, label)?);
        }
        Ok(dedup(messages))
    }

    /// `--level`: the registry judges with the subject's own level, so a different level is
    /// judged here, with the same engine the embedded registry uses, on the versions' texts.
    async fn judge_here(
        &self,
        local: &LocalSchema,
        level: CompatibilityLevel,
        versions: &[i64],
    ) -> anyhow::Result<Vec<String>> {
        if level == CompatibilityLevel::None {
            return Ok(Vec::new());
        }
        let mut previous = Vec::new();
        for version in versions_for(level, versions) {
            previous.push(self.registry.version_text(&local.subject, *version).await?);
        }
        let candidate = ParsedSchema::parse(&local.text)
            .with_context(|| format!("{} is not a valid Avro schema", local.source))?;
        dhanman_registry::incompatibilities(level, &candidate, &previous).with_context(|| {
            format!(
                "checking {} against the registry's versions of {}",
                local.source, local.subject
            )
        })
    }
}

/// The versions a level compares with, oldest first: all of them, or the latest.
fn versions_for(level: CompatibilityLevel, versions: &[i64]) -> &[i64] {
    let transitive = matches!(
        level,
        CompatibilityLevel::BackwardTransitive
            | CompatibilityLevel::ForwardTransitive
            | CompatibilityLevel::FullTransitive
    );
    match transitive {
        true => versions,
        false => &versions[versions.len().saturating_sub(1)..],
    }
}

/// The reasons in a `{is_compatible, messages}` answer; an incompatible answer always yields
/// at least one, since an empty list means compatible.
fn compatibility_messages(body: &Value, version: Option<i64>) -> anyhow::Result<Vec<String>> {
    match body["is_compatible"].as_bool() {
        Some(true) => return Ok(Vec::new()),
        Some(false) => {}
        None => bail!("the registry's compatibility answer has no is_compatible: {body}"),
    }
    let mut messages: Vec<String> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
        .collect();
    if messages.is_empty() {
        messages.push("incompatible (the registry gave no reason)".to_owned());
    }
    Ok(match version {
        Some(version) => messages
            .into_iter()
            .map(|m| format!("version {version}: {m}"))
            .collect(),
        None => messages,
    })
}

fn dedup(mut messages: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    messages.retain(|m| seen.insert(m.clone()));
    messages
}

// ------------------------------------------------------------------------------------------
// register

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Registered,
    AlreadyRegistered,
    Incompatible,
}

#[derive(Debug, Serialize)]
struct Registration {
    subject: String,
    source: String,
    status: Status,
    version: Option<i64>,
    id: Option<i64>,
    messages: Vec<String>,
}

async fn register(args: RegisterArgs) -> anyhow::Result<Outcome> {
    let registry = Registry::new(&args.registry)?;
    let locals = local_schemas(&args.local, Versions::All)?;
    let mut registrations = Vec::new();
    for local in &locals {
        let registration = register_one(&registry, local).await?;
        if !args.json {
            print_registration(&registration);
        }
        registrations.push(registration);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&registrations)?);
    }
    Ok(Outcome::of(
        registrations
            .iter()
            .all(|r| !matches!(r.status, Status::Incompatible)),
    ))
}

fn print_registration(registration: &Registration) {
    let Registration {
        subject, source, ..
    } = registration;
    let (version, id) = (
        registration.version.unwrap_or_default(),
        registration.id.unwrap_or_default(),
    );
    match registration.status {
        Status::Registered => {
            println!("{subject} ({source}): registered as version {version}, id {id}")
        }
        Status::AlreadyRegistered => {
            println!("{subject} ({source}): already registered as version {version}, id {id}")
        }
        Status::Incompatible => {
            println!("{subject} ({source}): INCOMPATIBLE, not registered");
            for message in &registration.messages {
                println!("    {message}");
            }
        }
    }
}

async fn register_one(registry: &Registry, local: &LocalSchema) -> anyhow::Result<Registration> {
    let mut registration = Registration {
        subject: local.subject.clone(),
        source: local.source.clone(),
        status: Status::AlreadyRegistered,
        version: None,
        id: None,
        messages: Vec::new(),
    };
    if let Some((version, id)) = registry.lookup(local).await? {
        (registration.version, registration.id) = (Some(version), Some(id));
        return Ok(registration);
    }
    let reply = registry
        .call(
            Method::POST,
            &["subjects", &local.subject, "versions"],
            &[],
            Some(&json!({ "schema": local.text })),
        )
        .await?;
    if reply.status == StatusCode::CONFLICT {
        registration.status = Status::Incompatible;
        registration.messages.push(reply.message());
        return Ok(registration);
    }
    let body = reply.json(&format!(
        "registering {} as {}",
        local.source, local.subject
    ))?;
    registration.status = Status::Registered;
    registration.id = body["id"].as_i64();
    registration.version = match body["version"].as_i64() {
        Some(version) => Some(version),
        // Confluent answers with the id only; the lookup says which version it became.
        None => registry.lookup(local).await?.map(|(version, _)| version),
    };
    Ok(registration)
}

// ------------------------------------------------------------------------------------------
// list

#[derive(Debug, Serialize)]
struct SubjectListing {
    subject: String,
    level: &'static str,
    versions: Vec<VersionListing>,
}

#[derive(Debug, Serialize)]
struct VersionListing {
    version: i64,
    id: i64,
}

async fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let registry = Registry::new(&args.registry)?;
    let body = registry
        .call(Method::GET, &["subjects"], &[], None)
        .await?
        .json("listing subjects")?;
    let mut subjects: Vec<String> = serde_json::from_value(body)
        .context("the registry's list of subjects is not an array of strings")?;
    subjects.sort();
    let mut listings = Vec::new();
    for subject in subjects {
        let level = registry.level(&subject).await?.as_str();
        let mut versions = Vec::new();
        for version in registry.versions(&subject).await?.unwrap_or_default() {
            let body = registry.version(&subject, version).await?;
            versions.push(VersionListing {
                version,
                id: body["id"].as_i64().unwrap_or_default(),
            });
        }
        listings.push(SubjectListing {
            subject,
            level,
            versions,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listings)?);
    } else {
        for listing in &listings {
            let versions: Vec<String> = listing
                .versions
                .iter()
                .map(|v| format!("{} (id {})", v.version, v.id))
                .collect();
            println!(
                "{:<19} {}  versions {}",
                listing.level,
                listing.subject,
                versions.join(", ")
            );
        }
        println!("{} subject(s) in {}", listings.len(), registry.display);
    }
    Ok(Outcome::Compatible)
}

// ------------------------------------------------------------------------------------------
// local schemas

/// One local schema and the subject it belongs to.
#[derive(Debug)]
struct LocalSchema {
    subject: String,
    /// Our version counter (from the catalog or the file name), for ordering.
    version: u32,
    text: String,
    source: String,
}

enum Versions {
    /// The newest version of each compiled-in record (what this binary reads with).
    Newest,
    /// Every compiled-in version, oldest first (what this binary may write).
    All,
}

/// The schemas to work on, by subject and then version, oldest first.
fn local_schemas(args: &LocalArgs, versions: Versions) -> anyhow::Result<Vec<LocalSchema>> {
    let catalog = Catalog::global();
    let subject =
        |topic: &str, name: &str| topics::subject(&format!("{}{topic}", args.topic_prefix), name);
    let mut locals = match &args.dir {
        Some(dir) => schemas_in(dir, catalog, subject)?,
        None => {
            let names: BTreeSet<&str> = catalog.all().map(|r| r.name.as_str()).collect();
            let records = names.into_iter().flat_map(|name| {
                let newest = catalog.latest(name).map_or(1, |r| r.version);
                let oldest = match versions {
                    Versions::Newest => newest,
                    Versions::All => 1,
                };
                (oldest..=newest).filter_map(move |v| catalog.get(name, v))
            });
            records
                .map(|record| LocalSchema {
                    subject: subject(record.topic, &record.name),
                    version: record.version,
                    text: record.text.to_owned(),
                    source: format!("{} v{}, compiled in", record.name, record.version),
                })
                .collect()
        }
    };
    locals.sort_by(|a, b| (&a.subject, a.version).cmp(&(&b.subject, b.version)));
    if !args.subjects.is_empty() {
        let known: BTreeSet<&str> = locals.iter().map(|l| l.subject.as_str()).collect();
        if let Some(unknown) = args.subjects.iter().find(|s| !known.contains(s.as_str())) {
            bail!(
                "no local schema belongs to subject {unknown:?}; local subjects: {}",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        locals.retain(|l| args.subjects.contains(&l.subject));
    }
    Ok(locals)
}

/// Every `.avsc` under `dir`, its record mapped to a topic through the catalog.
fn schemas_in(
    dir: &Path,
    catalog: &Catalog,
    subject: impl Fn(&str, &str) -> String,
) -> anyhow::Result<Vec<LocalSchema>> {
    let mut files = Vec::new();
    collect_avsc(dir, &mut files)?;
    if files.is_empty() {
        bail!("no .avsc files under {}", dir.display());
    }
    files.sort();
    let mut locals: Vec<LocalSchema> = Vec::new();
    for path in files {
        let source = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let name = record_fullname(&text)
            .with_context(|| format!("{} is not an Avro record schema", path.display()))?;
        let record = catalog.latest(&name).with_context(|| {
            format!(
                "{}: record {name} is not in the catalog (schemas/src/catalog.rs), so its topic \
                 is unknown",
                path.display()
            )
        })?;
        let version = file_version(&path);
        let subject = subject(record.topic, &name);
        if let Some(twin) = locals
            .iter()
            .find(|l| l.subject == subject && l.version == version)
        {
            bail!(
                "{} and {} are both version {version} of {name}",
                twin.source,
                source
            );
        }
        locals.push(LocalSchema {
            subject,
            version,
            text,
            source,
        });
    }
    Ok(locals)
}

fn collect_avsc(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_avsc(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            files.push(path);
        }
    }
    Ok(())
}

/// The record's full name, resolved as Avro does: a dotted name is already full.
fn record_fullname(text: &str) -> anyhow::Result<String> {
    let json: Value = serde_json::from_str(text)?;
    let name = json["name"]
        .as_str()
        .filter(|_| json["type"] == "record")
        .ok_or_else(|| anyhow!("the top level must be a record with a name"))?;
    Ok(match json["namespace"].as_str() {
        Some(namespace) if !name.contains('.') && !namespace.is_empty() => {
            format!("{namespace}.{name}")
        }
        _ => name.to_owned(),
    })
}

/// `InvoiceCreated.avsc` is version 1, `InvoiceCreated.v2.avsc` version 2.
fn file_version(path: &Path) -> u32 {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.rsplit_once(".v"))
        .and_then(|(_, version)| version.parse().ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::registry::{percent_decode, redact};
    use super::*;

    #[test]
    fn file_versions() {
        assert_eq!(file_version(Path::new("sales/InvoiceCreated.avsc")), 1);
        assert_eq!(file_version(Path::new("sales/InvoiceCreated.v2.avsc")), 2);
        assert_eq!(file_version(Path::new("sales/InvoiceCreated.v12.avsc")), 12);
        assert_eq!(file_version(Path::new("sales/Odd.vx.avsc")), 1);
    }

    #[test]
    fn full_names_resolve_like_avro() {
        let full = |text: &str| record_fullname(text).unwrap();
        assert_eq!(
            full(r#"{"type":"record","name":"A","namespace":"x.y","fields":[]}"#),
            "x.y.A"
        );
        assert_eq!(
            full(r#"{"type":"record","name":"p.A","namespace":"x.y","fields":[]}"#),
            "p.A"
        );
        assert_eq!(full(r#"{"type":"record","name":"A","fields":[]}"#), "A");
        assert!(record_fullname(r#"{"type":"enum","name":"E","symbols":[]}"#).is_err());
        assert!(record_fullname("not json").is_err());
    }

    #[test]
    fn transitive_levels_compare_with_every_version() {
        let versions = [1, 2, 5];
        assert_eq!(
            versions_for(CompatibilityLevel::BackwardTransitive, &versions),
            [1, 2, 5]
        );
        assert_eq!(versions_for(CompatibilityLevel::Full, &versions), [5]);
        assert!(versions_for(CompatibilityLevel::Backward, &[]).is_empty());
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            redact("http://user:secret@host:8081/"),
            "http://user:***@host:8081/"
        );
        let registry = Registry::new(&RegistryArgs {
            url: Some("http://al%40ice:s3cret@127.0.0.1:9/sr/".into()),
            http_addr: "0.0.0.0:8080".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(
            registry.credentials,
            Some(("al@ice".to_owned(), "s3cret".to_owned()))
        );
        assert_eq!(registry.display, "http://127.0.0.1:9/sr");
        assert_eq!(
            registry
                .url(&["subjects", "a.b-c.D", "versions"], &[("verbose", "true")])
                .as_str(),
            "http://127.0.0.1:9/sr/subjects/a.b-c.D/versions?verbose=true"
        );
    }

    #[test]
    fn the_embedded_registry_is_on_the_api_address() {
        assert_eq!(
            embedded_registry_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/schema-registry"
        );
    }

    #[test]
    fn an_incompatible_answer_always_has_a_reason() {
        let body = json!({"is_compatible": false});
        assert_eq!(
            compatibility_messages(&body, Some(3)).unwrap(),
            ["version 3: incompatible (the registry gave no reason)"]
        );
        let body = json!({"is_compatible": true, "messages": []});
        assert!(compatibility_messages(&body, None).unwrap().is_empty());
        assert!(compatibility_messages(&json!({"error": "?"}), None).is_err());
    }
}
