//! The status a partition's lag earns over a sliding window of samples, by the rules of
//! Burrow's evaluator (LinkedIn's consumer-lag monitor), and the status of a group from its
//! partitions'. A sample is what the lag sampler saw at one time: the group's committed
//! offset, the partition's log end, and whether a member of the group held the partition.
//!
//! Burrow judges a window of offset *commits*. A sampler cannot see commits, only offsets,
//! so a sample counts as a commit when a member held the partition (a live consumer
//! commits, if only the same offset) or when the offset moved since the sample before (a
//! move is a commit). The rules, in order, for the newest `window` samples:
//!
//! 1. Fewer samples than the window: not judged yet, OK (with `complete` below 1).
//! 2. Current lag at most the allowed lag: OK.
//! 3. STOP: the last commit is older than the commits' span (now − last > last − first),
//!    or nothing committed in the window, unless the log end was at or below the
//!    committed offset at some sample of the window (caught up lately).
//! 4. REWIND: the committed offset went backwards and has not come back up since.
//! 5. If the lag was above the allowed lag at every sample: STALL when the committed
//!    offset never moved, WARN when the lag never shrank from one sample to the next.
//! 6. Otherwise OK.
//!
//! A group is ERR when any partition is STOP, STALL or REWIND, else WARN when any is WARN,
//! else OK.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A partition's or a group's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Err,
    Stop,
    Stall,
    Rewind,
}

impl Status {
    /// Every status, in the order of [`Status::code`].
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::Warn,
        Status::Err,
        Status::Stop,
        Status::Stall,
        Status::Rewind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Err => "ERR",
            Status::Stop => "STOP",
            Status::Stall => "STALL",
            Status::Rewind => "REWIND",
        }
    }

    /// The number a gauge carries: 0 OK, 1 WARN, 2 ERR, 3 STOP, 4 STALL, 5 REWIND.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The evaluator's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Samples per partition a judgement looks at (Burrow's `intervals`).
    pub window: usize,
    /// Lag, in records, a partition may have and still count as caught up (Burrow's
    /// `allowed-lag`).
    pub allowed_lag: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            window: 10,
            allowed_lag: 0,
        }
    }
}

/// What the sampler saw of one partition of one group at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub committed: i64,
    pub log_end: i64,
    /// A member of the group held the partition.
    pub held: bool,
}

impl Sample {
    fn lag(&self) -> i64 {
        (self.log_end - self.committed).max(0)
    }
}

/// A partition's status and how much of its window there was to judge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Judgement {
    pub status: Status,
    /// Samples in the window over the window's size (1: a full window was judged).
    pub complete: f64,
}

/// Judges the newest `rules.window` samples of `samples` (oldest first) at `now`.
pub fn judge(samples: &[Sample], now: DateTime<Utc>, rules: &Rules) -> Judgement {
    let size = rules.window.max(1);
    let window = &samples[samples.len().saturating_sub(size)..];
    let complete = window.len() as f64 / size as f64;
    let status = match window.last() {
        Some(last) if window.len() == size && last.lag() > rules.allowed_lag => {
            evaluate(window, now, rules)
        }
        _ => Status::Ok,
    };
    Judgement { status, complete }
}

/// Rules 3 to 6 on a full window whose current lag is above the allowed lag.
fn evaluate(window: &[Sample], now: DateTime<Utc>, rules: &Rules) -> Status {
    let last = window[window.len() - 1];
    if stopped(window, now) && !caught_up_lately(window, last.committed) {
        return Status::Stop;
    }
    if rewound(window) {
        return Status::Rewind;
    }
    if window.iter().all(|s| s.lag() > rules.allowed_lag) {
        if window.iter().all(|s| s.committed == last.committed) {
            return Status::Stall;
        }
        if window.windows(2).all(|w| w[1].lag() >= w[0].lag()) {
            return Status::Warn;
        }
    }
    Status::Ok
}

/// Rule 3: the last commit is older than the span of the window's commits.
fn stopped(window: &[Sample], now: DateTime<Utc>) -> bool {
    let commits: Vec<DateTime<Utc>> = window
        .iter()
        .enumerate()
        .filter(|(i, s)| s.held || (*i > 0 && s.committed != window[i - 1].committed))
        .map(|(_, s)| s.at)
        .collect();
    match (commits.first(), commits.last()) {
        (Some(first), Some(last)) => now - *last > *last - *first,
        _ => true,
    }
}

/// Burrow's exception to rule 3: the log end was at or below the committed offset at some
/// sample (the group was caught up within the window).
fn caught_up_lately(window: &[Sample], committed: i64) -> bool {
    window.iter().any(|s| s.log_end <= committed)
}

/// Rule 4: the offset went backwards and never came back up to where it was.
fn rewound(window: &[Sample]) -> bool {
    let Some(at) = (1..window.len()).find(|&i| window[i].committed < window[i - 1].committed)
    else {
        return false;
    };
    let before = window[at - 1].committed;
    !window[at..].iter().any(|s| s.committed >= before)
}

/// A group's status from its partitions'.
pub fn group_status(partitions: impl IntoIterator<Item = Status>) -> Status {
    partitions
        .into_iter()
        .map(|s| match s {
            Status::Stop | Status::Stall | Status::Rewind | Status::Err => Status::Err,
            other => other,
        })
        .max()
        .unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    const RULES: Rules = Rules {
        window: 5,
        allowed_lag: 0,
    };

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// Samples a second apart from `t0`: (committed, log end, held).
    fn window(points: &[(i64, i64, bool)]) -> Vec<Sample> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(committed, log_end, held))| Sample {
                at: t0() + TimeDelta::seconds(i as i64),
                committed,
                log_end,
                held,
            })
            .collect()
    }

    /// Judged a second after the last sample.
    fn status(points: &[(i64, i64, bool)]) -> Status {
        let w = window(points);
        let now = w.last().map_or(t0(), |s| s.at) + TimeDelta::seconds(1);
        judge(&w, now, &RULES).status
    }

    #[test]
    fn no_lag_is_ok_whatever_else_the_window_shows() {
        // Nobody holds it and the offset never moves, but nothing waits.
        assert_eq!(status(&[(7, 7, false); 5]), Status::Ok);
        // Lag within the allowed lag.
        let w = window(&[(5, 8, false); 5]);
        let lenient = Rules {
            allowed_lag: 3,
            ..RULES
        };
        let now = w[4].at + TimeDelta::seconds(60);
        assert_eq!(judge(&w, now, &lenient).status, Status::Ok);
        assert_eq!(judge(&w, now, &RULES).status, Status::Stop);
    }

    #[test]
    fn a_consumer_that_keeps_up_with_a_growing_log_is_ok() {
        let s = status(&[
            (0, 10, true),
            (10, 20, true),
            (20, 25, true),
            (25, 30, true),
            (30, 31, true),
        ]);
        assert_eq!(s, Status::Ok);
    }

    #[test]
    fn a_window_not_yet_full_is_not_judged() {
        let w = window(&[(0, 50, false), (0, 60, false), (0, 70, false)]);
        let j = judge(&w, w[2].at + TimeDelta::seconds(600), &RULES);
        assert_eq!(j.status, Status::Ok);
        assert!((j.complete - 0.6).abs() < 1e-9, "{j:?}");
        // The same partition, two samples later, is judged.
        let w = window(&[(0, 50, false); 5]);
        let j = judge(&w, w[4].at + TimeDelta::seconds(1), &RULES);
        assert_eq!((j.status, j.complete), (Status::Stop, 1.0));
    }

    #[test]
    fn a_partition_with_no_samples_is_ok_and_not_complete() {
        let j = judge(&[], t0(), &RULES);
        assert_eq!((j.status, j.complete), (Status::Ok, 0.0));
    }

    #[test]
    fn only_the_newest_window_counts() {
        // Long ago it stalled; the newest five samples drain.
        let mut points = vec![(0, 100, true); 20];
        points.extend([
            (10, 100, true),
            (30, 100, true),
            (60, 100, true),
            (90, 100, true),
            (99, 100, true),
        ]);
        assert_eq!(status(&points), Status::Ok);
    }

    #[test]
    fn nobody_holding_a_lagging_partition_whose_offset_stays_is_stop() {
        assert_eq!(
            status(&[
                (40, 50, false),
                (40, 55, false),
                (40, 60, false),
                (40, 65, false),
                (40, 70, false)
            ]),
            Status::Stop
        );
    }

    #[test]
    fn commits_that_ended_more_than_their_span_ago_are_stop() {
        // Moved at the second, third and fourth samples (commits over two seconds), then
        // nobody: a second after the last move it is not stopped, three seconds after it is.
        let w = window(&[
            (10, 90, false),
            (20, 90, false),
            (30, 90, false),
            (40, 95, false),
            (40, 99, false),
        ]);
        let soon = w[4].at;
        assert_eq!(judge(&w, soon, &RULES).status, Status::Ok);
        let later = w[3].at + TimeDelta::seconds(3);
        assert_eq!(judge(&w, later, &RULES).status, Status::Stop);
    }

    #[test]
    fn caught_up_within_the_window_is_not_yet_stop() {
        // Caught up at the first sample (log end 40 = committed), then records arrived
        // with nobody reading: Burrow waits for that to leave the window.
        assert_eq!(
            status(&[
                (40, 40, false),
                (40, 45, false),
                (40, 50, false),
                (40, 55, false),
                (40, 60, false)
            ]),
            Status::Ok
        );
    }

    #[test]
    fn a_held_partition_whose_offset_never_moves_is_stall() {
        assert_eq!(status(&[(40, 50, true); 5]), Status::Stall);
    }

    #[test]
    fn an_offset_that_went_back_and_stayed_back_is_rewind() {
        let points = [
            (100, 200, true),
            (120, 210, true),
            (5, 220, true),
            (30, 230, true),
            (60, 240, true),
        ];
        assert_eq!(status(&points), Status::Rewind);
        // Back past where it was before the rewind: judged by the other rules.
        let recovered = [
            (100, 200, true),
            (120, 210, true),
            (5, 220, true),
            (80, 230, true),
            (130, 235, true),
        ];
        assert_eq!(status(&recovered), Status::Ok);
    }

    #[test]
    fn moving_offsets_with_lag_that_never_shrinks_are_warn() {
        let s = status(&[
            (0, 100, true),
            (10, 110, true),
            (20, 125, true),
            (30, 135, true),
            (40, 150, true),
        ]);
        assert_eq!(s, Status::Warn);
        // The same, but the lag shrank once: OK.
        let s = status(&[
            (0, 100, true),
            (10, 110, true),
            (40, 125, true),
            (50, 135, true),
            (60, 150, true),
        ]);
        assert_eq!(s, Status::Ok);
    }

    #[test]
    fn a_group_is_err_for_any_stop_stall_or_rewind_else_its_worst() {
        use Status::*;
        assert_eq!(group_status([]), Ok);
        assert_eq!(group_status([Ok, Ok]), Ok);
        assert_eq!(group_status([Ok, Warn]), Warn);
        for bad in [Stop, Stall, Rewind] {
            assert_eq!(group_status([Warn, bad, Ok]), Err);
        }
        assert_eq!(
            Status::ALL.iter().map(|s| s.code()).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
    }
}
