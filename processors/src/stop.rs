//! Asking running parts to stop, as SIGTERM or Ctrl-C does: a processor finishes the batch
//! in hand, leaves its consumer group (so the group's other members take its partitions at
//! once instead of after the session timeout) and returns; the notification sender finishes
//! the emails it is sending and claims no more.

use tokio::sync::watch;

/// The side that asks: [`Stopper::stop`] reaches every [`Stop`] made from it.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

impl Default for Stopper {
    fn default() -> Self {
        Stopper(watch::channel(false).0)
    }
}

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// A signal for one part; any number can be made, before or after the stop.
    pub fn signal(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

/// The side that is asked.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal that never comes: the part runs until it fails or is dropped.
    pub fn never() -> Stop {
        Stop(watch::channel(false).1)
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is asked for; never, if its [`Stopper`] is gone without asking.
    pub async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// [`Stop::requested`] as a future that owns the signal, for APIs that take a shutdown
    /// future.
    pub async fn into_requested(mut self) {
        self.requested().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_reaches_signals_made_before_and_after_it() {
        let stopper = Stopper::default();
        let mut before = stopper.signal();
        assert!(!before.is_requested());
        let waiting = tokio::spawn(async move { before.requested().await });
        stopper.stop();
        waiting.await.expect("the waiting part saw the stop");
        let mut after = stopper.signal();
        assert!(after.is_requested());
        after.requested().await;
    }

    #[tokio::test]
    async fn never_and_a_dropped_stopper_never_ask() {
        let mut never = Stop::never();
        assert!(!never.is_requested());
        let waited = tokio::time::timeout(Duration::from_millis(50), never.requested()).await;
        assert!(waited.is_err(), "Stop::never() resolved");
        let mut orphan = Stopper::default().signal();
        let waited = tokio::time::timeout(Duration::from_millis(50), orphan.requested()).await;
        assert!(waited.is_err(), "a signal of a dropped stopper resolved");
    }
}
