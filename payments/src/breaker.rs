//! The circuit breaker in front of the payment gateway.
//!
//! Hand-written on purpose: the crates for it either bring a retry policy of their own
//! (we retry with `backon`, and the breaker must see each attempt, not each call) or have
//! had no release in years (`failsafe`), and none exposes its state for a gauge and for
//! `/readyz`. The state machine is small enough to read in one sitting:
//!
//! ```text
//!  closed --(threshold consecutive transient failures)--> open
//!  open   --(cool-down elapsed; the next call is the trial)--> half-open
//!  half-open --(trial succeeds)--> closed      half-open --(trial fails)--> open
//! ```
//!
//! While open, and while a half-open trial is out, calls fail fast without touching the
//! network. Time is passed in, so the tests need no clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The state as the gauge and `/readyz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// `dhanman_gateway_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_out: bool },
}

#[derive(Debug)]
pub struct Breaker {
    phase: Mutex<Phase>,
    threshold: u32,
    cool_down: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        let breaker = Breaker {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cool_down,
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    /// May a call go out now? `Err` carries how long until one may.
    pub fn acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut phase = self.lock();
        match *phase {
            Phase::Closed { .. } => Ok(()),
            Phase::Open { until } if now < until => Err(until - now),
            Phase::Open { .. } | Phase::HalfOpen { trial_out: false } => {
                *phase = Phase::HalfOpen { trial_out: true };
                self.publish(BreakerState::HalfOpen);
                Ok(())
            }
            // One trial at a time; it answers within the client's timeout.
            Phase::HalfOpen { trial_out: true } => Err(self.cool_down),
        }
    }

    /// The gateway answered (even a decline or a 4xx: it is up).
    pub fn on_success(&self) {
        let mut phase = self.lock();
        if !matches!(*phase, Phase::Closed { failures: 0 }) {
            if !matches!(*phase, Phase::Closed { .. }) {
                tracing::info!("payment gateway answered again: circuit breaker closed");
            }
            *phase = Phase::Closed { failures: 0 };
            self.publish(BreakerState::Closed);
        }
    }

    /// A transient failure: unreachable, timed out, 5xx, response lost.
    pub fn on_failure(&self, now: Instant) {
        let mut phase = self.lock();
        let open = match *phase {
            Phase::Closed { failures } if failures + 1 < self.threshold => {
                *phase = Phase::Closed {
                    failures: failures + 1,
                };
                false
            }
            Phase::Closed { .. } | Phase::HalfOpen { .. } => true,
            // A call let through before it opened; the cool-down already runs.
            Phase::Open { .. } => false,
        };
        if open {
            tracing::warn!(cool_down = ?self.cool_down, "payment gateway failing: circuit breaker open");
            *phase = Phase::Open {
                until: now + self.cool_down,
            };
            self.publish(BreakerState::Open);
        }
    }

    /// A call let through that ended without an outcome (cancelled): frees the trial.
    pub fn on_abandoned(&self) {
        let mut phase = self.lock();
        if let Phase::HalfOpen { trial_out: true } = *phase {
            *phase = Phase::HalfOpen { trial_out: false };
        }
    }

    /// How long calls will still fail fast, when open; never takes the half-open trial.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            Phase::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    /// What the next call would meet: an open breaker whose cool-down has passed shows as
    /// half-open.
    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!(crate::metric::BREAKER_STATE).set(state.gauge());
    }

    /// A panic while holding the lock leaves a valid phase behind; keep going.
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let b = Breaker::new(3, COOL);
        let t = Instant::now();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success(); // resets the count
        b.on_failure(t);
        b.on_failure(t);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert!(b.acquire(t).is_ok());
        b.on_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
        let wait = b.acquire(t + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert_eq!(b.open_for(t + Duration::from_secs(4)), Some(wait));
        assert_eq!(b.open_for(t + COOL), None, "peeking takes no trial");
        assert_eq!(b.state(t + COOL), BreakerState::HalfOpen);
        assert!(b.acquire(t + COOL).is_ok());
    }

    #[test]
    fn half_open_lets_one_trial_through_and_closes_on_success() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        let later = t + COOL;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.acquire(later).is_ok(), "the trial");
        assert!(
            b.acquire(later).is_err(),
            "a second call while the trial is out"
        );
        b.on_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(b.acquire(later).is_ok());
    }

    #[test]
    fn a_failed_trial_opens_again_for_a_full_cool_down() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        let later = t + COOL;
        assert!(b.acquire(later).is_ok());
        b.on_failure(later);
        assert_eq!(b.state(later), BreakerState::Open);
        assert!(b.acquire(later + COOL - Duration::from_millis(1)).is_err());
        assert!(b.acquire(later + COOL).is_ok());
    }

    #[test]
    fn an_abandoned_trial_frees_the_next_one() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        assert!(b.acquire(t + COOL).is_ok());
        b.on_abandoned();
        assert!(b.acquire(t + COOL).is_ok());
    }
}
