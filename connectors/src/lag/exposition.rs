//! The lag gauges in the Prometheus text format, rendered from the newest sample alone and
//! appended to `/metrics`. They are kept out of the process's metrics recorder on purpose:
//! a recorder never forgets a label set, and the groups of a cluster come and go (every
//! test run, every short-lived tool makes one), so a group that is gone would be exported
//! for ever. Here a group is exported exactly while the newest sample holds it, and the
//! sampler's cap on partitions bounds the label sets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::LagReport;
use super::status::Status;

/// Gauge, label `group`: the group's status code (0 OK, 1 WARN, 2 ERR; see [`Status`]).
pub const GROUP_STATUS: &str = "dhanman_lag_group_status";
/// Gauge, labels `group`, `status`: the group's partitions in each partition status (OK,
/// WARN, STOP, STALL, REWIND), zeros included.
pub const PARTITIONS: &str = "dhanman_lag_partitions";
/// Gauge: consumer groups on the cluster left out of the newest sample by the sampler's cap
/// on partitions.
pub const GROUPS_LEFT_OUT: &str = "dhanman_lag_groups_left_out";

static TEXT: Mutex<String> = Mutex::new(String::new());

/// The gauges of the newest sample this process took; empty before its first.
pub fn text() -> String {
    TEXT.lock().map(|t| t.clone()).unwrap_or_default()
}

/// Replaces the exported gauges with `report`'s.
pub fn publish(report: &LagReport) {
    let text = render(report);
    if let Ok(mut t) = TEXT.lock() {
        *t = text;
    }
}

/// A label value escaped as the text format wants it: group and topic names are whatever
/// a client chose.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One gauge family: `# HELP`, `# TYPE` and its samples (label pairs, value).
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    samples: Vec<(Vec<(&'a str, String)>, f64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'a str, help: &'a str) -> Self {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'a str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// The text of `report`'s gauges; per-partition ones named like kafka-lag-exporter's.
pub fn render(report: &LagReport) -> String {
    let mut lag = Family::new("kafka_consumergroup_group_lag", "lag in records");
    let mut lag_seconds = Family::new(
        "kafka_consumergroup_group_lag_seconds",
        "age of the oldest unconsumed record",
    );
    let mut offset = Family::new("kafka_consumergroup_group_offset", "committed offset");
    let mut max_lag = Family::new("kafka_consumergroup_group_max_lag", "largest partition lag");
    let mut max_lag_seconds = Family::new(
        "kafka_consumergroup_group_max_lag_seconds",
        "age of the group's oldest unconsumed record",
    );
    let mut sum_lag = Family::new(
        "kafka_consumergroup_group_sum_lag",
        "lag over all partitions",
    );
    let mut status = Family::new(GROUP_STATUS, "0 OK, 1 WARN, 2 ERR");
    let mut counts = Family::new(PARTITIONS, "partitions in each status");
    let mut latest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for g in &report.groups {
        let group = || ("group", g.group.clone());
        max_lag_seconds.add(vec![group()], g.max_lag_seconds);
        max_lag.add(
            vec![group()],
            g.partitions.iter().map(|p| p.lag).max().unwrap_or(0) as f64,
        );
        sum_lag.add(vec![group()], g.lag as f64);
        status.add(vec![group()], f64::from(g.status.code()));
        for s in [
            Status::Ok,
            Status::Warn,
            Status::Stop,
            Status::Stall,
            Status::Rewind,
        ] {
            let n = g.partitions.iter().filter(|p| p.status == s).count();
            counts.add(vec![group(), ("status", s.as_str().into())], n as f64);
        }
        for p in &g.partitions {
            let labels = || {
                vec![
                    group(),
                    ("topic", p.topic.clone()),
                    ("partition", p.partition.to_string()),
                ]
            };
            lag.add(labels(), p.lag as f64);
            lag_seconds.add(labels(), p.lag_seconds);
            offset.add(labels(), p.committed as f64);
            latest.insert((&p.topic, p.partition), p.log_end);
        }
    }
    let mut latest_offset = Family::new("kafka_partition_latest_offset", "log-end offset");
    for ((topic, partition), end) in latest {
        latest_offset.add(
            vec![
                ("topic", topic.to_string()),
                ("partition", partition.to_string()),
            ],
            end as f64,
        );
    }
    let mut left_out = Family::new(GROUPS_LEFT_OUT, "groups beyond the sampler's cap");
    left_out.add(Vec::new(), report.groups_left_out as f64);
    let mut out = String::new();
    for family in [
        &lag,
        &lag_seconds,
        &offset,
        &latest_offset,
        &max_lag,
        &max_lag_seconds,
        &sum_lag,
        &status,
        &counts,
        &left_out,
    ] {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::Authority;
    use crate::lag::{GroupLag, PartitionLag};

    fn group(name: &str, statuses: &[Status]) -> GroupLag {
        let partitions: Vec<PartitionLag> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| PartitionLag {
                group: name.into(),
                topic: "t".into(),
                partition: i as i32,
                committed: 5,
                stored_outside_log: None,
                log_end: 8,
                lag: 3,
                lag_seconds: 1.5,
                consumer_id: None,
                host: None,
                client_id: None,
                status: *s,
                complete: 1.0,
            })
            .collect();
        GroupLag {
            group: name.into(),
            ours: false,
            status: crate::lag::status::group_status(statuses.iter().copied()),
            complete: 1.0,
            state: None,
            offsets_in: Authority::Kafka,
            members: Vec::new(),
            lag: 3 * statuses.len() as i64,
            max_lag_seconds: 1.5,
            consume_rate: None,
            lag_trend: None,
            eta_seconds: None,
            history: Vec::new(),
            partitions,
        }
    }

    fn report(groups: Vec<GroupLag>) -> LagReport {
        LagReport {
            measured_at: chrono::Utc::now(),
            groups,
            groups_left_out: 2,
        }
    }

    #[test]
    fn the_text_is_the_newest_sample_only_with_every_status_counted() {
        let first = render(&report(vec![
            group("gone", &[Status::Ok]),
            group("stuck", &[Status::Stop, Status::Ok]),
        ]));
        assert!(
            first.contains("dhanman_lag_group_status{group=\"stuck\"} 2\n"),
            "{first}"
        );
        assert!(first.contains("dhanman_lag_partitions{group=\"stuck\",status=\"STOP\"} 1\n"));
        assert!(first.contains("dhanman_lag_partitions{group=\"stuck\",status=\"STALL\"} 0\n"));
        assert!(first.contains(
            "kafka_consumergroup_group_lag{group=\"stuck\",topic=\"t\",partition=\"1\"} 3\n"
        ));
        assert!(first.contains("dhanman_lag_groups_left_out 2\n"));
        // One log end per partition, however many groups read it.
        assert_eq!(first.matches("kafka_partition_latest_offset{").count(), 2);
        // The group that left the cluster is not in the next sample's text.
        let second = render(&report(vec![group("stuck", &[Status::Stop, Status::Ok])]));
        assert!(!second.contains("\"gone\""), "{second}");
        assert_eq!(
            second
                .matches("# TYPE dhanman_lag_group_status gauge")
                .count(),
            1
        );
    }

    #[test]
    fn hostile_label_values_are_escaped_not_injected() {
        assert_eq!(escape("plain.group-1"), "plain.group-1");
        assert_eq!(
            escape("a\"} 1\nfake_metric{x=\"\\"),
            "a\\\"} 1\\nfake_metric{x=\\\"\\\\"
        );
    }
}
