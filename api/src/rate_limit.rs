//! Requests per API key: a token bucket per key (GCRA, `governor`), checked right after
//! the key is authenticated, so one tenant's loop cannot take the capacity every other
//! tenant shares. Past its rate a key gets 429 with `Retry-After`; unauthenticated
//! requests never reach a bucket (they are 401 first), so the buckets are bounded by the
//! keys that exist.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use uuid::Uuid;

/// Default sustained requests per second per key.
pub const DEFAULT_PER_SECOND: u32 = 1000;
/// Default burst above the sustained rate a key may spend at once.
pub const DEFAULT_BURST: u32 = 2000;

/// The per-key buckets one API process keeps (each process its own: with N replicas a
/// key may reach N times its rate).
#[derive(Clone)]
pub struct KeyRateLimit {
    limiter:
        Arc<RateLimiter<Uuid, governor::state::keyed::DefaultKeyedStateStore<Uuid>, DefaultClock>>,
    clock: DefaultClock,
}

impl KeyRateLimit {
    /// `per_second` requests sustained, `burst` at once; `None` when `per_second` is 0
    /// (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        let clock = DefaultClock::default();
        Some(KeyRateLimit {
            limiter: Arc::new(RateLimiter::dashmap_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            )),
            clock,
        })
    }

    /// Takes one request from the key's bucket, or says how long until one is free.
    pub fn check(&self, key_id: Uuid) -> Result<(), Duration> {
        self.limiter
            .check_key(&key_id)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}
