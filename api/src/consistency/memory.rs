//! The events the batches heard lately applied, per processor, so that a wait for an event
//! made since can take its first look here instead of in the database.
//!
//! A batch's notification names the events it applied ([`heard`]); a processor's
//! notifications reach the listener in the order its batches committed, from the moment it
//! listens. So for an event made after the listener began listening, every batch that could
//! apply it is heard: if no notification named it yet, it is not applied yet, and its waiter
//! (registered before this look, see [`super::Wait::begin`]) is woken by the one that will.
//! Memory answers only when that holds, with [`CLOCK_SKEW`] to spare for the clock of the
//! process that made the event: the event was made after the listener began, within
//! [`REMEMBERED`], and after the processor's last gap (a batch too large to name its events,
//! or events forgotten for room). Otherwise the database answers, as it always may; a wrong
//! "not yet" would cost the waiter at most its own look a second later, never a wrong
//! answer, since memory holds only events a batch said it applied.
//!
//! [`heard`]: dhanman_processors::applied::heard

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// How long the events a batch named are remembered.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// How far the clock of a process that makes events may be ahead of this one's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// Most events remembered per processor; past it the oldest are forgotten, which is a gap.
pub const MAX_REMEMBERED: usize = 65_536;

/// Most processors remembered; the batches of any other are a gap for every processor not
/// remembered (a name is whatever a notification says).
pub const MAX_PROCESSORS: usize = 32;

#[derive(Default)]
pub(super) struct Memory {
    /// When the listener last began listening; `None` while it is not.
    since: Option<SystemTime>,
    processors: HashMap<String, Heard>,
    /// When a batch of a processor past [`MAX_PROCESSORS`] was last heard.
    unremembered: Option<SystemTime>,
}

#[derive(Default)]
struct Heard {
    ids: HashSet<Uuid>,
    order: VecDeque<(SystemTime, Uuid)>,
    /// When this processor's events last went unremembered.
    gap: Option<SystemTime>,
}

impl Memory {
    /// The listener listens from `now` (`None`: it stopped), and nothing heard before counts
    /// as complete.
    pub(super) fn listening(&mut self, now: Option<SystemTime>) {
        self.since = now;
    }

    /// A batch of `processor` applied `ids` (`None`: it did not say which), heard at `now`.
    pub(super) fn heard(&mut self, processor: &str, ids: Option<&[Uuid]>, now: SystemTime) {
        if !self.processors.contains_key(processor) {
            if self.processors.len() >= MAX_PROCESSORS {
                self.unremembered = Some(now);
                return;
            }
            self.processors
                .insert(processor.to_string(), Heard::default());
        }
        let Some(heard) = self.processors.get_mut(processor) else {
            return;
        };
        let Some(ids) = ids else {
            heard.gap = Some(now);
            return;
        };
        for id in ids {
            if heard.ids.insert(*id) {
                heard.order.push_back((now, *id));
            }
        }
        let horizon = now
            .checked_sub(REMEMBERED)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some(&(at, id)) = heard.order.front() {
            let full = heard.order.len() > MAX_REMEMBERED;
            if at >= horizon && !full {
                break;
            }
            if full {
                heard.gap = Some(now);
            }
            heard.order.pop_front();
            heard.ids.remove(&id);
        }
    }

    /// Whether `processor` has applied `event_id`, made at `made`, when memory can say.
    pub(super) fn answer(
        &self,
        processor: &str,
        event_id: Uuid,
        made: SystemTime,
        now: SystemTime,
    ) -> Option<bool> {
        let since = self.since?;
        // The earliest the event can have been made, whatever the maker's clock.
        let made = made.checked_sub(CLOCK_SKEW)?;
        let remembered_from = now.checked_sub(REMEMBERED)?;
        if made <= since || made <= remembered_from {
            return None;
        }
        match self.processors.get(processor) {
            Some(heard) if heard.gap.is_some_and(|gap| gap >= made) => None,
            Some(heard) => Some(heard.ids.contains(&event_id)),
            None if self.unremembered.is_some_and(|gap| gap >= made) => None,
            None => Some(false),
        }
    }

    /// Events remembered now, of every processor.
    pub(super) fn len(&self) -> usize {
        self.processors.values().map(|h| h.ids.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn memory_answers_for_events_made_since_it_listened_and_not_otherwise() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut memory = Memory::default();
        assert_eq!(
            memory.answer("ledger", a, at(10), at(11)),
            None,
            "not listening"
        );
        memory.listening(Some(at(0)));
        memory.heard("ledger", Some(&[a]), at(11));
        assert_eq!(memory.answer("ledger", a, at(10), at(12)), Some(true));
        assert_eq!(memory.answer("ledger", b, at(10), at(12)), Some(false));
        assert_eq!(
            memory.answer("reminders", a, at(10), at(12)),
            Some(false),
            "another processor's"
        );
        // Made too near the listener's start, or too long ago to be remembered still.
        assert_eq!(memory.answer("ledger", a, at(1), at(3)), None);
        assert_eq!(memory.answer("ledger", a, at(10), at(19)), None);
        // Forgotten once older than REMEMBERED.
        memory.heard("ledger", Some(&[b]), at(25));
        assert_eq!(memory.answer("ledger", b, at(24), at(25)), Some(true));
        assert_eq!(memory.answer("ledger", a, at(24), at(25)), Some(false));
        assert_eq!(memory.len(), 1);
        // Listening again: nothing made before counts.
        memory.listening(Some(at(30)));
        assert_eq!(memory.answer("ledger", b, at(29), at(31)), None);
        memory.listening(None);
        assert_eq!(memory.answer("ledger", b, at(40), at(41)), None);
    }

    #[test]
    fn a_batch_that_names_no_events_leaves_its_processor_to_the_database_for_a_while() {
        let a = Uuid::now_v7();
        let mut memory = Memory::default();
        memory.listening(Some(at(0)));
        memory.heard("ledger", None, at(20));
        assert_eq!(
            memory.answer("ledger", a, at(19), at(21)),
            None,
            "made before the gap"
        );
        assert_eq!(
            memory.answer("ledger", a, at(21), at(22)),
            None,
            "within the skew"
        );
        assert_eq!(memory.answer("ledger", a, at(23), at(24)), Some(false));
        assert_eq!(memory.answer("users", a, at(19), at(21)), Some(false));
    }

    #[test]
    fn past_its_processors_memory_answers_for_none_it_does_not_remember() {
        let a = Uuid::now_v7();
        let mut memory = Memory::default();
        memory.listening(Some(at(0)));
        for n in 0..MAX_PROCESSORS {
            memory.heard(&format!("p{n}"), Some(&[a]), at(10));
        }
        memory.heard("stranger", Some(&[a]), at(20));
        assert_eq!(memory.answer("p0", a, at(19), at(21)), Some(true));
        assert_eq!(memory.answer("stranger", a, at(19), at(21)), None);
        assert_eq!(memory.answer("users", a, at(19), at(21)), None);
        assert_eq!(memory.answer("users", a, at(23), at(24)), Some(false));
    }

    #[test]
    fn past_its_room_memory_forgets_the_oldest_and_counts_that_a_gap() {
        let mut memory = Memory::default();
        memory.listening(Some(at(0)));
        let ids: Vec<Uuid> = (0..=MAX_REMEMBERED).map(|_| Uuid::now_v7()).collect();
        memory.heard("ledger", Some(&ids), at(10));
        assert_eq!(memory.len(), MAX_REMEMBERED);
        assert_eq!(memory.answer("ledger", ids[1], at(9), at(10)), None);
        assert_eq!(memory.answer("ledger", ids[1], at(13), at(14)), Some(true));
    }
}
