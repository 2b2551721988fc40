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
pub fn dlq(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Subject name under TopicRecordNameStrategy: several record types share a topic.
pub fn subject(topic: &str, record_fullname: &str) -> String {
    format!("{topic}-{record_fullname}")
}
