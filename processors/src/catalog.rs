//! Every processor the pipeline runs, in one list ([`PROCESSORS`]): its name, how it is
//! built from the settings, and the worker that runs beside its consumer, if it has one.
//! A new processor is a module of this crate and an entry here; `dhanman process <name>`,
//! `dhanman up`, replays, rebuilds and the tools that list groups all read this list.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;

use crate::approvals::ApprovalRequests;
use crate::ledger::{Accounts, Ledger};
use crate::notifier::sender::{Sender, SenderConfig};
use crate::notifier::{Notifier, Templates};
use crate::reminders::{Reminders, Scheduler, SchedulerSettings};
use crate::runtime::{BoxedProcessor, DEFAULT_LINGER, Processor};
use crate::stop::Stop;
use crate::users::UserSync;
use crate::{Error, Result};

/// What building the processors and their companions takes (from the `dhanman` settings).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Overrides of the notification templates.
    pub template_dir: Option<PathBuf>,
    /// How many days before an invoice's due date its reminder fires.
    pub reminder_days_before: u32,
    /// How often the reminder scheduler looks for due timers.
    pub reminder_tick: Duration,
    /// The notification sender's SMTP server, retries and limits.
    pub sender: SenderConfig,
    /// The accounts the ledger's posting rules use.
    pub ledger_accounts: Accounts,
}

/// A companion worker running until its stop.
pub type Running = BoxFuture<'static, Result<()>>;

/// How long the batches of the processors that take a record for every invoice but that
/// no command's balance waits on (reminders, notifier) gather records once they have their
/// first. Below full load they commit every few milliseconds at the runtime's
/// [`DEFAULT_LINGER`], each batch a transaction and a commit; gathering ten times longer
/// leaves that CPU to the ledger and the API, whose 5 ms every balance read with a
/// consistency token waits on (at 1,000 commands/s on 2 cores, freshness p50 41 -> 35 ms,
/// p99 119 -> 99 ms, medians of seven runs each; BENCHMARKS.md). A reminders read with a consistency
/// token may wait up to this much longer; under full load batches fill before it ends.
pub const UNHURRIED_LINGER: Duration = Duration::from_millis(50);

/// One processor of the pipeline.
pub struct ProcessorSpec {
    /// Its stable name ([`Processor::name`]): `dhanman process <name>`, the consumer group
    /// `dhanman.<name>`.
    pub name: &'static str,
    pub build: fn(&Settings) -> BoxedProcessor,
    /// How long its batches wait for more records once they have their first
    /// ([`crate::runtime::RuntimeConfig::linger`]).
    pub linger: Duration,
    /// The worker that runs beside its consumer, if any.
    pub companion: Option<CompanionSpec>,
}

/// A worker beside a processor's consumer ([`crate::companion`]).
pub struct CompanionSpec {
    /// For messages: "notification sender".
    pub name: &'static str,
    /// Builds the worker (an error names the setting at fault) and returns its run until
    /// the stop.
    pub start: fn(&Settings, PgPool, Stop) -> Result<Running>,
}

impl ProcessorSpec {
    /// The topics the processor reads (logical names).
    pub fn topics(&self, settings: &Settings) -> Vec<String> {
        (self.build)(settings).topics()
    }
}

/// Every processor, in the order `dhanman up` starts them.
pub const PROCESSORS: &[ProcessorSpec] = &[
    ProcessorSpec {
        name: "ledger",
        build: |s| BoxedProcessor::new(Ledger::default().with_accounts(s.ledger_accounts.clone())),
        linger: DEFAULT_LINGER,
        companion: None,
    },
    ProcessorSpec {
        name: "users",
        build: |_| BoxedProcessor::new(UserSync),
        linger: DEFAULT_LINGER,
        companion: None,
    },
    ProcessorSpec {
        name: "approvals",
        build: |_| BoxedProcessor::new(ApprovalRequests),
        linger: DEFAULT_LINGER,
        companion: None,
    },
    ProcessorSpec {
        name: "reminders",
        build: |s| BoxedProcessor::new(Reminders::new(s.reminder_days_before)),
        linger: UNHURRIED_LINGER,
        companion: Some(CompanionSpec {
            name: "reminder scheduler",
            start: |s, pool, stop| {
                let settings = SchedulerSettings {
                    tick: s.reminder_tick.max(Duration::from_millis(1)),
                };
                Ok(Box::pin(Scheduler::new(pool, settings).run_until(stop)))
            },
        }),
    },
    ProcessorSpec {
        name: "notifier",
        build: |s| BoxedProcessor::new(Notifier::new(Templates::new(s.template_dir.clone()))),
        linger: UNHURRIED_LINGER,
        companion: Some(CompanionSpec {
            name: "notification sender",
            start: |s, pool, stop| {
                let sender = Sender::new(pool, s.sender.clone())?;
                Ok(Box::pin(sender.run_until(stop)))
            },
        }),
    },
];

/// The names of [`PROCESSORS`], in the same order.
pub const NAMES: [&str; PROCESSORS.len()] = {
    let mut names = [""; PROCESSORS.len()];
    let mut i = 0;
    while i < PROCESSORS.len() {
        names[i] = PROCESSORS[i].name;
        i += 1;
    }
    names
};

/// The processor called `name`.
pub fn find(name: &str) -> Result<&'static ProcessorSpec> {
    PROCESSORS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::Config(format!(
            "unknown processor {name:?}; known: {}",
            NAMES.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            template_dir: None,
            reminder_days_before: 3,
            reminder_tick: Duration::from_secs(1),
            sender: SenderConfig::new("smtp://127.0.0.1:2525", "dhanman@example.org"),
            ledger_accounts: Accounts::default(),
        }
    }

    #[test]
    fn each_entry_builds_the_processor_it_names() {
        let settings = settings();
        for spec in PROCESSORS {
            let processor = (spec.build)(&settings);
            assert_eq!(processor.name(), spec.name);
            assert!(
                !spec.topics(&settings).is_empty(),
                "{} reads nothing",
                spec.name
            );
        }
        assert_eq!(NAMES.len(), PROCESSORS.len());
        let unique: std::collections::HashSet<_> = NAMES.iter().collect();
        assert_eq!(unique.len(), NAMES.len(), "a name twice: {NAMES:?}");
    }

    #[test]
    fn only_processors_no_balance_waits_on_gather_their_batches_longer() {
        assert_eq!(find("ledger").unwrap().linger, DEFAULT_LINGER);
        for name in ["reminders", "notifier"] {
            assert_eq!(find(name).unwrap().linger, UNHURRIED_LINGER, "{name}");
        }
        assert!(UNHURRIED_LINGER > DEFAULT_LINGER);
        // Every other processor keeps the runtime's default.
        for spec in PROCESSORS {
            if !["reminders", "notifier"].contains(&spec.name) {
                assert_eq!(spec.linger, DEFAULT_LINGER, "{}", spec.name);
            }
        }
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        assert_eq!(find("reminders").unwrap().name, "reminders");
        let Err(Error::Config(message)) = find("ledgr") else {
            panic!("an unknown processor was found");
        };
        assert!(message.contains("\"ledgr\""), "{message}");
        for name in NAMES {
            assert!(message.contains(name), "{message}");
        }
    }
}
