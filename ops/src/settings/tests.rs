//! The settings' parsing: names and aliases, refusals, the variable a refusal names.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use secrecy::ExposeSecret;

use super::*;

/// `argv` parsed by clap as the arguments of `A`. A variable clap reads from this
/// process's environment does not matter: the settings resolve variables through the
/// lookup each test gives.
fn matches<A: Args>(argv: &[&str]) -> clap::ArgMatches {
    A::augment_args(clap::Command::new("dhanman"))
        .try_get_matches_from(argv)
        .expect("arguments")
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn database_url(argv: &[&str], vars: &[(&str, &str)]) -> Result<String, clap::Error> {
    DatabaseUrl::from_matches(&matches::<DatabaseUrl>(argv), env(vars))
        .map(|url| url.expose_secret().to_string())
}

#[test]
fn clap_reads_the_dhanman_names() {
    for setting in ALIASED {
        let arg = setting.arg();
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(setting.name));
        assert!(setting.name.starts_with("DHANMAN_"), "{setting:?}");
        assert_eq!(setting.name, format!("DHANMAN_{}", setting.alias));
    }
}

#[test]
fn the_dhanman_name_wins_over_the_standard_one() {
    let both = [
        ("DHANMAN_DATABASE_URL", "postgres://db/dhanman"),
        ("DATABASE_URL", "postgres://db/other"),
    ];
    assert_eq!(
        database_url(&["dhanman"], &both).unwrap(),
        "postgres://db/dhanman"
    );
    let both = [
        ("DHANMAN_KAFKA_BOOTSTRAP_SERVERS", "kafka-a:9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka-b:9092"),
    ];
    let servers = KafkaBootstrapServers::from_matches(
        &matches::<KafkaBootstrapServers>(&["dhanman"]),
        env(&both),
    )
    .unwrap();
    assert_eq!(&*servers, "kafka-a:9092");
}

#[test]
fn the_standard_name_alone_is_read() {
    let alone = [("DATABASE_URL", "postgres://db/other")];
    assert_eq!(
        database_url(&["dhanman"], &alone).unwrap(),
        "postgres://db/other"
    );
    let alone = [("SCHEMA_REGISTRY_URL", "http://registry:8081")];
    let registry =
        SchemaRegistryUrl::from_matches(&matches::<SchemaRegistryUrl>(&["dhanman"]), env(&alone))
            .unwrap();
    assert_eq!(registry.get(), Some("http://registry:8081"));
    let alone = [("SMTP_URL", "smtp://mail:1025")];
    let smtp = SmtpUrl::from_matches(&matches::<SmtpUrl>(&["dhanman"]), env(&alone)).unwrap();
    assert_eq!(smtp.expose_secret(), "smtp://mail:1025");
}

/// A refusal of `argv` under `vars`, and the variable it says the value came from.
fn refusal(argv: &[&str], vars: &[(&str, &str)]) -> Option<String> {
    let command = Config::augment_args(clap::Command::new("dhanman"));
    let with_env = env(vars);
    let mut args: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    // clap reads the process's environment, which a test must not change: the
    // variables' values are given to it as the flags they stand for, unless named.
    for (name, value) in vars {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == *name))
            .expect("a variable of Config");
        if !argv.iter().any(|a| a.starts_with("--")) {
            args.push(format!("--{}={value}", arg.get_long().expect("a flag")));
        }
    }
    let error = command
        .clone()
        .try_get_matches_from(&args)
        .expect_err("refused");
    let given: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    refused_variable(&error, &command, &given, with_env)
}

#[test]
fn a_refused_value_names_the_variable_it_came_from() {
    assert_eq!(
        refusal(&["dhanman"], &[("DHANMAN_DB_POOL", "0")]).as_deref(),
        Some("DHANMAN_DB_POOL=0")
    );
    assert_eq!(
        refusal(&["dhanman"], &[("DHANMAN_RETENTION_INTERVAL", "0s")]).as_deref(),
        Some("DHANMAN_RETENTION_INTERVAL=0s")
    );
    // Given as a flag, the error's own words name it.
    assert_eq!(
        refusal(&["dhanman", "--lanes=0"], &[("DHANMAN_LANES", "2")]),
        None
    );
}

#[test]
fn zero_is_refused_where_it_would_stall_or_spin() {
    for (flag, refused, kept) in [
        ("--db-pool", "0", "1"),
        ("--batch-size", "0", "1"),
        ("--batch-size", "100001", "100000"),
        ("--lanes", "0", "64"),
        ("--topic-partitions", "0", "1"),
        ("--topic-replicas", "0", "3"),
        ("--invoice-writers", "65", "64"),
        ("--lag-interval-ms", "0", "1"),
        ("--audit-interval-ms", "0", "1"),
        ("--reminder-tick-ms", "0", "1"),
        ("--payment-recovery-interval-ms", "0", "1"),
        ("--gateway-timeout-ms", "0", "1"),
        ("--gateway-breaker-threshold", "0", "1"),
        ("--smtp-max-attempts", "0", "1"),
        ("--smtp-concurrency", "0", "1"),
        ("--smtp-timeout-ms", "0", "1"),
        ("--smtp-lease-ms", "0", "1"),
        ("--retention-interval", "0s", "1s"),
        ("--lag-max-partitions", "0", "1"),
        ("--topic-prefix", "a b.", "team-a_1."),
        ("--topic-prefix", &"p".repeat(240), &"p".repeat(200)),
        ("--po-cfo-threshold", "-5", "0"),
    ] {
        let parse = |value: &str| {
            Config::augment_args(clap::Command::new("dhanman")).try_get_matches_from([
                "dhanman".to_string(),
                "--database-url=postgres://db/x".to_string(),
                format!("{flag}={value}"),
            ])
        };
        let error = parse(refused).expect_err(flag);
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{flag}"
        );
        assert!(error.to_string().contains(flag), "{flag}: {error}");
        parse(kept).unwrap_or_else(|e| panic!("{flag} {kept}: {e}"));
    }
}

#[test]
fn the_flag_wins_over_both_variables() {
    let both = [
        ("DHANMAN_DATABASE_URL", "postgres://db/dhanman"),
        ("DATABASE_URL", "postgres://db/other"),
    ];
    let argv = ["dhanman", "--database-url", "postgres://db/flag"];
    assert_eq!(database_url(&argv, &both).unwrap(), "postgres://db/flag");
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let vars = [
        ("DHANMAN_DATABASE_URL", ""),
        ("DATABASE_URL", "postgres://db/other"),
    ];
    assert_eq!(
        database_url(&["dhanman"], &vars).unwrap(),
        "postgres://db/other"
    );
}

#[test]
fn a_missing_database_url_names_both_variables() {
    let error = database_url(&["dhanman"], &[]).unwrap_err();
    assert_eq!(
        error.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
    let message = error.to_string();
    assert!(
        message.contains("DHANMAN_DATABASE_URL or DATABASE_URL")
            && message.contains("--database-url"),
        "{message}"
    );
}

#[test]
fn unset_settings_with_a_default_take_it() {
    let servers = KafkaBootstrapServers::from_matches(
        &matches::<KafkaBootstrapServers>(&["dhanman"]),
        env(&[]),
    )
    .unwrap();
    assert_eq!(&*servers, "127.0.0.1:19092");
    let smtp = SmtpUrl::from_matches(&matches::<SmtpUrl>(&["dhanman"]), env(&[])).unwrap();
    assert_eq!(smtp.expose_secret(), "smtp://127.0.0.1:2525");
    let registry =
        SchemaRegistryUrl::from_matches(&matches::<SchemaRegistryUrl>(&["dhanman"]), env(&[]))
            .unwrap();
    assert_eq!(registry.get(), None);
}

fn config(argv: &[&str]) -> Config {
    let mut full = vec![
        "dhanman",
        "--database-url",
        "postgres://owner:hunter2@db/books",
    ];
    full.extend_from_slice(argv);
    Config::from_arg_matches(&matches::<Config>(&full)).expect("a config")
}

#[test]
fn milliseconds_become_durations() {
    let config = config(&["--consistency-wait-ms", "250", "--smtp-lease-ms", "90000"]);
    assert_eq!(config.consistency_wait_ms.get(), Duration::from_millis(250));
    assert_eq!(config.smtp_lease_ms.get(), Duration::from_secs(90));
    // The defaults are milliseconds too.
    assert_eq!(config.gateway_timeout_ms.get(), Duration::from_secs(5));
    assert_eq!(
        config.gateway_breaker_cool_down_ms.get(),
        Duration::from_secs(30)
    );
    assert_eq!(config.reminder_tick_ms.get(), Duration::from_secs(1));
    assert!(
        Config::augment_args(clap::Command::new("dhanman"))
            .try_get_matches_from(["dhanman", "--lag-interval-ms", "5s"])
            .is_err()
    );
}

#[test]
fn each_live_consumer_takes_its_processors_linger_and_the_shared_settings() {
    let config = config(&["--batch-size", "700", "--lanes", "3"]);
    for spec in catalog::PROCESSORS {
        let runtime = config.runtime_config_for(spec.name);
        assert_eq!(runtime.linger, spec.linger, "{}", spec.name);
        assert_eq!(
            (runtime.max_batch, runtime.lanes),
            (700, 3),
            "{}",
            spec.name
        );
    }
    assert_ne!(
        config.runtime_config_for("notifier").linger,
        config.runtime_config_for("ledger").linger
    );
}

#[test]
fn debug_output_hides_the_secrets() {
    let config = config(&["--smtp-url", "smtp://mailer:s3cret@mail:25"]);
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert_eq!(
        config.database_url.expose_secret(),
        "postgres://owner:hunter2@db/books"
    );
}
