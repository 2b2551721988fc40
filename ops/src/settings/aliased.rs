//! Settings read from a flag, their `DHANMAN_` variable or the standard variable other
//! tools read, and the types that carry them (secrets stay [`SecretString`]s).

use secrecy::{ExposeSecret, SecretString};

/// A setting read from its flag or its `DHANMAN_` variable, else from the standard variable
/// other tools read (psql, Kafka's and Confluent's clients): one prefix for every setting,
/// and environments written for those tools still work. The `DHANMAN_` name wins when both
/// are set.
#[derive(Debug, Clone, Copy)]
pub struct Aliased {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// The `DHANMAN_` variable (the one `--help` shows).
    pub name: &'static str,
    /// The standard variable, read when neither the flag nor `name` is given.
    pub alias: &'static str,
    help: &'static str,
    /// Used when none of the three is given; `None`: the setting is required.
    pub default: Option<&'static str>,
    /// Kept out of `--help` and of error messages: it may carry a password.
    secret: bool,
}

pub const DATABASE_URL: Aliased = Aliased {
    flag: "database-url",
    name: "DHANMAN_DATABASE_URL",
    alias: "DATABASE_URL",
    help: "Postgres connection string",
    default: None,
    secret: true,
};

pub const KAFKA_BOOTSTRAP_SERVERS: Aliased = Aliased {
    flag: "kafka-bootstrap-servers",
    name: "DHANMAN_KAFKA_BOOTSTRAP_SERVERS",
    alias: "KAFKA_BOOTSTRAP_SERVERS",
    help: "Kafka bootstrap servers",
    default: Some("127.0.0.1:19092"),
    secret: false,
};

pub const SCHEMA_REGISTRY_URL: Aliased = Aliased {
    flag: "schema-registry-url",
    name: "DHANMAN_SCHEMA_REGISTRY_URL",
    alias: "SCHEMA_REGISTRY_URL",
    help: "Confluent-compatible schema registry; none means the embedded one, served by the \
           API at `http://<DHANMAN_HTTP_ADDR>/schema-registry`",
    default: None,
    secret: false,
};

pub const SMTP_URL: Aliased = Aliased {
    flag: "smtp-url",
    name: "DHANMAN_SMTP_URL",
    alias: "SMTP_URL",
    help: "SMTP server the notifier sends through, `smtp://host[:port]` (plain SMTP, no TLS)",
    default: Some("smtp://127.0.0.1:2525"),
    secret: true,
};

/// Every setting with a standard name beside its `DHANMAN_` one (docs/configuration.md
/// lists both).
pub const ALIASED: [Aliased; 4] = [
    DATABASE_URL,
    KAFKA_BOOTSTRAP_SERVERS,
    SCHEMA_REGISTRY_URL,
    SMTP_URL,
];

impl Aliased {
    /// Both variables, for messages: `DHANMAN_DATABASE_URL or DATABASE_URL`.
    pub fn names(&self) -> String {
        format!("{} or {}", self.name, self.alias)
    }

    pub(super) fn arg(&self) -> clap::Arg {
        let otherwise = match self.default {
            Some(default) => format!("; neither: {default}"),
            None => String::new(),
        };
        clap::Arg::new(self.flag)
            .long(self.flag)
            .value_name(self.alias)
            .env(self.name)
            .hide_env_values(self.secret)
            .help(format!(
                "{} (${} when ${} is unset{otherwise})",
                self.help, self.alias, self.name
            ))
    }

    /// The value: the flag, else `name`, else `alias`, else the default (`lookup` reads a
    /// variable; an empty one counts as unset). `None`: a setting without a default that is
    /// nowhere given.
    pub fn resolve(
        &self,
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        // The variables are read through `lookup` rather than taken from what clap read, so
        // that the order is one function of the command line and the environment.
        let flag = match matches.value_source(self.flag) {
            Some(clap::parser::ValueSource::CommandLine) => {
                matches.get_one::<String>(self.flag).cloned()
            }
            _ => None,
        };
        let variable = |name: &str| lookup(name).filter(|value| !value.is_empty());
        flag.or_else(|| variable(self.name))
            .or_else(|| variable(self.alias))
            .or_else(|| self.default.map(str::to_string))
    }

    /// [`Aliased::resolve`] of a required setting; its absence is an error naming both
    /// variables and the flag.
    pub fn require(
        &self,
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, clap::Error> {
        self.resolve(matches, lookup).ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!(
                    "{} is not set: set {} (or pass --{})",
                    self.help,
                    self.names(),
                    self.flag
                ),
            )
        })
    }
}

/// What production resolves against: the process's environment.
fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One [`Aliased`] setting as a clap argument of its own, resolved as clap parses.
macro_rules! aliased_arg {
    ($type:ty, $setting:expr, $from_matches:expr) => {
        impl clap::Args for $type {
            fn augment_args(command: clap::Command) -> clap::Command {
                command.arg($setting.arg())
            }
            fn augment_args_for_update(command: clap::Command) -> clap::Command {
                command.arg($setting.arg())
            }
        }

        impl clap::FromArgMatches for $type {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                $from_matches(matches, environment)
            }
            fn update_from_arg_matches(
                &mut self,
                matches: &clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                *self = $from_matches(matches, environment)?;
                Ok(())
            }
        }
    };
}

/// Where Postgres is ([`DATABASE_URL`]); it may carry a password.
#[derive(Debug, Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn from_matches(
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        let url = DATABASE_URL.require(matches, lookup)?;
        Ok(Self(url.into()))
    }
}

impl ExposeSecret<str> for DatabaseUrl {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

aliased_arg!(DatabaseUrl, DATABASE_URL, DatabaseUrl::from_matches);

/// The brokers ([`KAFKA_BOOTSTRAP_SERVERS`]), `host:port[,host:port...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBootstrapServers(String);

impl KafkaBootstrapServers {
    pub fn from_matches(
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        KAFKA_BOOTSTRAP_SERVERS.require(matches, lookup).map(Self)
    }
}

impl std::ops::Deref for KafkaBootstrapServers {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KafkaBootstrapServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

aliased_arg!(
    KafkaBootstrapServers,
    KAFKA_BOOTSTRAP_SERVERS,
    KafkaBootstrapServers::from_matches
);

/// A schema registry of the installation's own ([`SCHEMA_REGISTRY_URL`]), if it has one.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistryUrl(Option<String>);

impl SchemaRegistryUrl {
    pub fn from_matches(
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        Ok(Self(SCHEMA_REGISTRY_URL.resolve(matches, lookup)))
    }

    /// The URL; `None` means the embedded registry.
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|url| !url.is_empty())
    }
}

aliased_arg!(
    SchemaRegistryUrl,
    SCHEMA_REGISTRY_URL,
    SchemaRegistryUrl::from_matches
);

/// The SMTP server notifications go through ([`SMTP_URL`]); it may carry credentials.
#[derive(Debug, Clone)]
pub struct SmtpUrl(SecretString);

impl SmtpUrl {
    pub fn from_matches(
        matches: &clap::ArgMatches,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        SMTP_URL.require(matches, lookup).map(Self::from)
    }
}

impl From<String> for SmtpUrl {
    fn from(url: String) -> Self {
        Self(url.into())
    }
}

impl ExposeSecret<str> for SmtpUrl {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

aliased_arg!(SmtpUrl, SMTP_URL, SmtpUrl::from_matches);
