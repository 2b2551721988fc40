//! The retry policy of the pipeline's workers, in one place: exponential backoff from a
//! first delay, doubling up to a cap (`backon`), with optional jitter. The consumer
//! runtime retries a batch with it, the relay its publishing, the notification sender its
//! claims and the recording of an outcome; each names its own [`Backoff`].

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

/// Delays between attempts: `first`, then doubled after each failure up to `max`, without
/// end; each plus up to `jitter` times itself at random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Fraction of each delay that may be added at random (0 for none), so that members
    /// failing together do not retry together.
    pub jitter: f32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            jitter: 0.0,
        }
    }

    pub const fn with_jitter(mut self, fraction: f32) -> Self {
        self.jitter = fraction;
        self
    }

    /// The delays, one per failed attempt; never ending.
    pub fn delays(&self) -> Delays {
        Delays {
            inner: ExponentialBuilder::default()
                .with_factor(2.0)
                .with_min_delay(self.first)
                .with_max_delay(self.max)
                .without_max_times()
                .build(),
            max: self.max,
            jitter: self.jitter,
        }
    }

    /// Runs `op` until it succeeds. `notify` sees each failure and the pause before the
    /// next attempt.
    pub async fn retry_forever<T, E, Fut>(
        &self,
        mut op: impl FnMut() -> Fut,
        mut notify: impl FnMut(&E, Duration),
    ) -> T
    where
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            // The delays never end, so this returns only with a success; should they end,
            // the retries start over from the first delay.
            if let Ok(done) = (&mut op).retry(self.delays()).notify(&mut notify).await {
                return done;
            }
        }
    }

    /// Runs `op` until it succeeds, or fails when the next attempt would start after
    /// `deadline`: that failure is returned. `notify` sees each failure that is retried and
    /// the pause before the next attempt.
    pub async fn retry_until<T, E, Fut>(
        &self,
        deadline: Instant,
        op: impl FnMut() -> Fut,
        notify: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        op.retry(self.delays())
            .adjust(|_, pause| pause.filter(|pause| Instant::now() + *pause < deadline))
            .notify(notify)
            .await
    }
}

/// The delays of a [`Backoff`], in order; see [`Backoff::delays`].
#[derive(Debug)]
pub struct Delays {
    inner: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
    jitter: f32,
}

impl Delays {
    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.inner.next().unwrap_or(self.max);
        if self.jitter > 0.0 {
            delay + delay.mul_f32(self.jitter * rand::random::<f32>())
        } else {
            delay
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Within a microsecond: the doubling is done in `f32` seconds.
    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_and_never_end() {
        let delays: Vec<Duration> = Backoff::new(ms(100), ms(5000)).delays().take(10).collect();
        let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000].map(ms);
        for (got, want) in delays.iter().zip(expected) {
            assert!(close(*got, want), "{delays:?}");
        }
        assert!(Backoff::new(ms(1), ms(2)).delays().nth(10_000).is_some());
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let mut delays = Backoff::new(ms(1000), ms(1000)).with_jitter(0.25).delays();
        let drawn: Vec<Duration> = (0..200).map(|_| delays.next_delay()).collect();
        assert!(
            drawn.iter().all(|d| *d >= ms(1000) && *d <= ms(1250)),
            "{drawn:?}"
        );
        assert!(drawn.iter().any(|d| *d > ms(1000)), "no jitter at all");
    }

    #[tokio::test]
    async fn retries_until_the_operation_succeeds() {
        let mut calls = 0;
        let mut pauses = Vec::new();
        let value = Backoff::new(ms(1), ms(2))
            .retry_forever(
                || {
                    calls += 1;
                    let n = calls;
                    async move { if n < 4 { Err(n) } else { Ok(n * 10) } }
                },
                |_: &i32, pause| pauses.push(pause),
            )
            .await;
        assert_eq!(value, 40);
        assert_eq!(pauses.len(), 3);
    }

    #[tokio::test]
    async fn gives_up_when_the_next_attempt_would_pass_the_deadline() {
        let mut calls = 0;
        let deadline = Instant::now() + ms(50);
        let outcome: Result<(), u32> = Backoff::new(ms(10), ms(10))
            .retry_until(
                deadline,
                || {
                    calls += 1;
                    let n = calls;
                    async move { Err(n) }
                },
                |_, _| {},
            )
            .await;
        let last = outcome.unwrap_err();
        assert!(Instant::now() + ms(10) >= deadline);
        assert!((2..=6).contains(&last), "{last} attempts");
    }
}
