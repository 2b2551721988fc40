//! The workers that run beside a processor's consumer (the notification sender, the
//! reminder scheduler) share one loop: they do their due work in rounds; between rounds
//! they wait for their poll interval, a wake-up of their own or the stop; while rounds
//! fail (the database is down) they back off; once stopped, they finish what they hold.

use std::time::Duration;

use dhanman_connectors::retry::Backoff;
use tokio::time::Instant;

use crate::Result;
use crate::stop::Stop;

/// A worker the loop drives ([`run_until`]).
pub trait Companion: Send {
    /// For the logs.
    fn name(&self) -> &'static str;

    /// The longest wait between the starts of two rounds when nothing wakes the worker.
    fn poll(&self) -> Duration;

    /// How failed rounds are retried.
    fn retry(&self) -> Backoff;

    /// One round of due work; `Ok(true)` when more may be due at once.
    fn round(&mut self) -> impl Future<Output = Result<bool>> + Send;

    /// Resolves when the worker has a reason to look again before its poll interval is
    /// up (a notification, a task of its own finished); never, unless the worker says so.
    fn woken(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Once stopped: finishes what the worker holds.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs `worker` until `stop` is asked for; a round in progress is finished, never cut.
pub async fn run_until<C: Companion>(mut worker: C, mut stop: Stop) -> Result<()> {
    let mut delays = worker.retry().delays();
    while !stop.is_requested() {
        let started = Instant::now();
        match worker.round().await {
            Ok(true) => delays = worker.retry().delays(),
            Ok(false) => {
                delays = worker.retry().delays();
                let next = started + worker.poll();
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = worker.woken() => {}
                    () = stop.requested() => {}
                }
            }
            Err(e) => {
                let pause = delays.next_delay();
                tracing::warn!(worker = worker.name(), error = %e, retry_in = ?pause, "a round failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.requested() => {}
                }
            }
        }
    }
    worker.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::stop::Stopper;

    /// Counts rounds; fails the first `failures`, has more work for the next `busy`.
    struct Counter {
        rounds: usize,
        failures: usize,
        busy: usize,
        done: Option<tokio::sync::oneshot::Sender<()>>,
        stop_after: usize,
        stopper: Option<Stopper>,
    }

    impl Companion for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }

        fn poll(&self) -> Duration {
            Duration::from_secs(3600)
        }

        fn retry(&self) -> Backoff {
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
        }

        async fn round(&mut self) -> Result<bool> {
            self.rounds += 1;
            if self.rounds == self.stop_after
                && let Some(stopper) = &self.stopper
            {
                stopper.stop();
            }
            if self.rounds <= self.failures {
                return Err(Error::Config("down".into()));
            }
            Ok(self.rounds <= self.failures + self.busy)
        }

        async fn finish(&mut self) {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }

    #[tokio::test]
    async fn failed_and_busy_rounds_go_again_without_waiting_for_the_poll() {
        let stopper = Stopper::default();
        let stop = stopper.signal();
        let (done, finished) = tokio::sync::oneshot::channel();
        let worker = Counter {
            rounds: 0,
            failures: 3,
            busy: 4,
            done: Some(done),
            stop_after: 8,
            stopper: Some(stopper),
        };
        // The poll is an hour: only retries and busy rounds can reach round 8 in time.
        tokio::time::timeout(Duration::from_secs(10), run_until(worker, stop))
            .await
            .expect("rounds waited for the poll")
            .unwrap();
        finished.await.expect("finish ran");
    }

    #[tokio::test]
    async fn an_idle_worker_waits_for_the_poll_or_the_stop() {
        let stopper = Stopper::default();
        let worker = Counter {
            rounds: 0,
            failures: 0,
            busy: 0,
            done: None,
            stop_after: 0,
            stopper: None,
        };
        let run = tokio::spawn(run_until(worker, stopper.signal()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !run.is_finished(),
            "an idle worker returned before its stop"
        );
        stopper.stop();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the stop was not seen while waiting")
            .unwrap()
            .unwrap();
    }
}
