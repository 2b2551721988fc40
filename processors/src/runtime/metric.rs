//! The runtime's Prometheus metrics (docs/metrics.md).

/// Histogram, label `processor`: seconds from a batch (lane) being handed to the
/// runtime to its commit, retries included.
pub const BATCH_DURATION: &str = "dhanman_processor_batch_duration_seconds";
/// Counter, labels `processor` and `outcome` (`applied`, `skipped_duplicate`, `ignored`,
/// `dead_lettered`): records of committed batches.
pub const EVENTS: &str = "dhanman_processor_events_total";
/// Counter, labels `processor` and `class` (`transient`: a batch attempt failed and is
/// retried; `poison`: a record was dead-lettered).
pub const FAILURES: &str = "dhanman_processor_failures_total";
/// Counter, label `processor`: batch attempts retried after a transient failure.
pub const RETRIES: &str = "dhanman_processor_retries_total";
/// Counter, labels `topic` (the dead-letter topic, physical name), `processor` and
/// `class` (`undecodable`, `invalid`, `rejected`): records dead-lettered.
pub const DLQ_RECORDS: &str = "dhanman_dlq_records_total";

/// Makes a processor's series visible at zero before anything happens.
pub(super) fn register(processor: &str) {
    for outcome in ["applied", "skipped_duplicate", "ignored", "dead_lettered"] {
        metrics::counter!(EVENTS, "processor" => processor.to_string(), "outcome" => outcome)
            .increment(0);
    }
    for class in ["transient", "poison"] {
        metrics::counter!(FAILURES, "processor" => processor.to_string(), "class" => class)
            .increment(0);
    }
    metrics::counter!(RETRIES, "processor" => processor.to_string()).increment(0);
}
