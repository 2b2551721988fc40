//! The replay's survey: what applying a range would do, per record type (already applied,
//! or would be), without doing it; and the runtime as a replay drives it, which leaves
//! the live group's stored offsets alone.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::batch::Decoded;
use super::{Incoming, Processor, Runtime};
use crate::{Error, Result};

/// What a replay finds for one record type in a range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TypeCounts {
    pub in_range: usize,
    pub already_applied: usize,
    pub would_apply: usize,
    /// Events of a type the processor does nothing with ([`super::Processor::ignores`]).
    pub ignored: usize,
}

/// What a replay finds in a range: per record type, and the records no type reads.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Survey {
    pub by_type: BTreeMap<String, TypeCounts>,
    pub poison: usize,
}

impl Survey {
    pub fn add(&mut self, other: &Survey) {
        for (name, c) in &other.by_type {
            let mine = self.by_type.entry(name.clone()).or_default();
            mine.in_range += c.in_range;
            mine.already_applied += c.already_applied;
            mine.would_apply += c.would_apply;
            mine.ignored += c.ignored;
        }
        self.poison += other.poison;
    }
}

impl<P: Processor> Runtime<P> {
    /// For a replay, which reads with a consumer of its own: batches are applied exactly as
    /// the live group applies them (gate, effects, dead letters), but the group's stored
    /// offsets are left alone.
    pub fn for_replay(mut self) -> Self {
        self.store_group_offsets = false;
        self
    }

    /// What applying `batch` would do, per record type, without doing it: each event is
    /// already applied (`applied_events` has it), would be, or is one the processor
    /// ignores.
    pub async fn survey(&self, batch: &[Incoming]) -> Result<Survey> {
        let decoded = self.decode_all(batch).await?;
        let mut survey = Survey::default();
        let mut events = Vec::new();
        for d in &decoded {
            match d {
                Decoded::Event(e) if self.processor.ignores(e) => {
                    let counts = survey.by_type.entry(e.name().to_string()).or_default();
                    counts.in_range += 1;
                    counts.ignored += 1;
                }
                Decoded::Event(e) => events.push(e.as_ref()),
                Decoded::Poison { .. } => survey.poison += 1,
            }
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.envelope().event_id).collect();
        let applied: HashSet<Uuid> =
            crate::applied::applied_among(&self.pool, self.processor.name(), &ids)
                .await
                .map_err(Error::Database)?
                .into_iter()
                .collect();
        let mut seen = HashSet::new();
        for event in events {
            let counts = survey.by_type.entry(event.name().to_string()).or_default();
            counts.in_range += 1;
            let id = event.envelope().event_id;
            if applied.contains(&id) || !seen.insert(id) {
                counts.already_applied += 1;
            } else {
                counts.would_apply += 1;
            }
        }
        Ok(survey)
    }
}
