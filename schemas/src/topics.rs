//! Topic names, one constant per row of the design's topic table.

pub const INVOICES: &str = "dhanman.sales.invoices";
pub const PAYMENTS: &str = "dhanman.sales.payments";
pub const PURCHASE_ORDERS: &str = "dhanman.purchase.orders";
pub const BILLS: &str = "dhanman.purchase.bills";
pub const SALARIES: &str = "dhanman.payroll.salaries";
pub const USERS: &str = "dhanman.common.users";
pub const NOTIFICATION_COMMANDS: &str = "dhanman.notification.commands";
pub const LEDGER_ENTRIES: &str = "dhanman.ledger.entries";

/// Every topic the pipeline owns (DLQ topics are derived with [`dlq`]).
pub const ALL: &[&str] = &[
    INVOICES,
    PAYMENTS,
    PURCHASE_ORDERS,
    BILLS,
    SALARIES,
    USERS,
    NOTIFICATION_COMMANDS,
    LEDGER_ENTRIES,
];

/// The dead-letter topic of a source topic.
/// Header names on dead letters: what the consumer runtime and the notification sender
/// write, and `dhanman dlq` reads and strips on redrive.
pub mod dlq_headers {
    /// Prefix of every dead-letter header.
    pub const PREFIX: &str = "dlq.";
    pub const ERROR: &str = "dlq.error";
    pub const ERROR_CLASS: &str = "dlq.error.class";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const PROCESSOR: &str = "dlq.processor";
    pub const FAILED_AT: &str = "dlq.failed.at";
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// On a redriven record: the dead letter it came from (topic/partition/offset).
    pub const REDRIVEN_FROM: &str = "dlq.redriven.from";
}

pub fn dlq(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Subject name under TopicRecordNameStrategy: several record types share a topic.
pub fn subject(topic: &str, record_fullname: &str) -> String {
    format!("{topic}-{record_fullname}")
}
