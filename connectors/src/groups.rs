//! Consumer groups as the broker's group coordinator sees them: state, members (client id,
//! host, the partitions each holds) and committed offsets, for any group on the cluster,
//! ours or not, the way `kafka-consumer-groups --describe` and Burrow read them.

use std::collections::BTreeMap;
use std::time::Duration;

use dhanman_plumbing::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::{Error, Result};

/// How long one look at the coordinator may take.
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a group's offsets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Authority {
    /// A processor group: Postgres holds its offsets (stored with each batch's effects);
    /// Kafka's committed offsets follow them.
    Postgres,
    /// Any other group: its committed offsets in Kafka.
    Kafka,
}

impl Authority {
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Postgres => "postgres",
            Authority::Kafka => "kafka",
        }
    }
}

/// A member of a consumer group, from DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    /// As the broker saw the member's connection, e.g. `/127.0.0.1`.
    pub host: String,
    /// The partitions the coordinator assigned it (`topic:partition`, sorted); empty for
    /// a group that is not a consumer group or whose assignment cannot be read.
    pub partitions: Vec<String>,
}

/// A consumer group's state on the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub group: String,
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
    pub state: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    pub members: Vec<Member>,
}

impl Group {
    /// Whether anyone is in the group, or a rebalance is under way: a group's offsets
    /// must not be moved then (`kafka-consumer-groups --reset-offsets` refuses too).
    pub fn is_active(&self) -> bool {
        !self.members.is_empty() || !matches!(self.state.as_str(), "Empty" | "Dead" | "")
    }

    /// The member the coordinator assigned `topic:partition` to.
    pub fn holder(&self, topic: &str, partition: i32) -> Option<&Member> {
        let name = format!("{topic}:{partition}");
        self.members.iter().find(|m| m.partitions.contains(&name))
    }

    fn from_info(info: &GroupInfo) -> Group {
        let consumer = info.protocol_type() == "consumer";
        let mut members: Vec<Member> = info
            .members()
            .iter()
            .map(|m| Member {
                member_id: m.id().to_string(),
                client_id: m.client_id().to_string(),
                host: m.client_host().to_string(),
                partitions: if consumer {
                    m.assignment()
                        .and_then(assigned_partitions)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
            })
            .collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Group {
            group: info.name().to_string(),
            state: info.state().to_string(),
            protocol_type: info.protocol_type().to_string(),
            members,
        }
    }
}

/// One group as the coordinator describes it; a group the broker does not know comes back
/// `Dead` with no members. Blocking.
pub fn describe(consumer: &BaseConsumer, group: &str) -> Result<Group> {
    let list = consumer.fetch_group_list(Some(group), LOOK_TIMEOUT)?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(Group::from_info)
        .unwrap_or_else(|| Group {
            group: group.to_string(),
            state: "Dead".into(),
            protocol_type: String::new(),
            members: Vec::new(),
        }))
}

/// Every group on the cluster, by name. Blocking.
pub fn list(consumer: &BaseConsumer) -> Result<Vec<Group>> {
    let list = consumer.fetch_group_list(None, LOOK_TIMEOUT)?;
    let mut groups: Vec<Group> = list.groups().iter().map(Group::from_info).collect();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(groups)
}

/// The offsets `group` has committed in Kafka on each of `topics`' partitions (partitions
/// without one are left out). Reads them with OffsetFetch, without joining the group.
/// Blocking.
pub fn committed(
    bootstrap: &str,
    group: &str,
    topics: &BTreeMap<String, i32>,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, count) in topics {
        for partition in 0..*count {
            tpl.add_partition(topic, partition);
        }
    }
    if tpl.count() == 0 {
        return Ok(BTreeMap::new());
    }
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let answer = consumer.committed_offsets(tpl, LOOK_TIMEOUT)?;
    let mut out = BTreeMap::new();
    for e in answer.elements() {
        if let Some(code) = e.error().err() {
            return Err(Error::Broker(format!(
                "committed offset of {group} on {}/{}: {code}",
                e.topic(),
                e.partition()
            )));
        }
        if let Offset::Offset(o) = e.offset() {
            out.insert((e.topic().to_string(), e.partition()), o);
        }
    }
    Ok(out)
}

/// Every topic on the cluster with its partition count (internal topics left out).
/// Blocking.
pub fn topics(consumer: &BaseConsumer) -> Result<BTreeMap<String, i32>> {
    let metadata = consumer.fetch_metadata(None, LOOK_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// The partitions of a consumer-protocol member assignment (`ConsumerProtocolAssignment`:
/// version, then `[topic, [partition]]`, then user data), as sorted `topic:partition`.
/// `None` for bytes that do not parse: they come from whichever client joined the group.
pub fn assigned_partitions(bytes: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = std::str::from_utf8(r.take(len)?).ok()?.to_string();
        let partitions = r.i32()?;
        for _ in 0..partitions.max(0) {
            out.push(format!("{topic}:{}", r.i32()?));
        }
    }
    out.sort();
    Some(out)
}

/// Big-endian reads that fail instead of running past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn an_assignment_reads_as_sorted_topic_partitions() {
        let bytes = assignment(&[("b", &[1, 0]), ("a", &[3])]);
        assert_eq!(
            assigned_partitions(&bytes).unwrap(),
            vec!["a:3", "b:0", "b:1"]
        );
        assert_eq!(
            assigned_partitions(&assignment(&[])).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn truncated_or_lying_assignments_are_refused_not_read_past_their_end() {
        let bytes = assignment(&[("topic", &[0, 1, 2])]);
        for cut in 0..bytes.len() - 4 {
            assert_eq!(assigned_partitions(&bytes[..cut]), None, "cut at {cut}");
        }
        // A count of two billion partitions in eight bytes.
        let mut lying = vec![0, 0, 0, 0, 0, 1, 0, 1, b't'];
        lying.extend(i32::MAX.to_be_bytes());
        assert_eq!(assigned_partitions(&lying), None);
    }
}
