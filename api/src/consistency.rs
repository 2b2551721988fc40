//! Read-your-writes: a command returns its event id as a consistency token; a query given
//! `?consistent_with=<token>` waits, bounded, until the processor behind the query (the
//! ledger, for most) has applied that event.
//!
//! A waiting query holds no database connection: it looks once, then sleeps until a
//! processor says it committed a batch (`NOTIFY dhanman_applied`, sent in each batch's
//! transaction; one listening connection per API process wakes every waiter) and looks
//! again. At most [`MAX_WAITERS`] queries wait at once per process; more are answered 503
//! with `Retry-After` rather than queued, so tokens that will never be applied (a random
//! uuid) cannot pile up. Whether an event is applied is the processors' to say
//! ([`has_applied`]); parsing the token and bounding the wait are this module's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dhanman_processors::applied::has_applied;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use crate::{ApiError, AppState};

/// The channel processors notify on after each committed batch.
pub const CHANNEL: &str = "dhanman_applied";

/// Queries that may wait for consistency at once, per API process.
pub const MAX_WAITERS: usize = 64;

/// What waiting queries share: the count of batches committed since the process started
/// (as far as the listener heard), and the permits to wait.
#[derive(Clone)]
pub struct Applied {
    batches: watch::Sender<u64>,
    waiters: Arc<Semaphore>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            batches: watch::Sender::new(0),
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
        }
    }
}

impl Applied {
    /// Listens on [`CHANNEL`] until the task is dropped, reconnecting after a failure;
    /// waiters look again on their own every second while nothing is heard.
    pub async fn listen(self, pool: PgPool) {
        loop {
            let listening = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                loop {
                    listener.recv().await?;
                    self.batches.send_modify(|n| *n += 1);
                }
            };
            let failed: Result<(), sqlx::Error> = listening.await;
            if let Err(e) = failed {
                tracing::debug!(error = %e, "consistency listener lost its connection; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

pub async fn wait_for_ledger(state: &AppState, token: Option<&str>) -> Result<(), ApiError> {
    wait_for(state, dhanman_processors::ledger::read::LEDGER, token).await
}

/// Waits until `processor` has applied the event `token` names.
pub async fn wait_for(
    state: &AppState,
    processor: &str,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let event_id: Uuid = token.parse().map_err(|_| {
        ApiError::validation(
            "consistent_with",
            "must be a consistency token returned by a command",
        )
    })?;
    // Made before the gate's retention: applied long ago (its gate row may be pruned).
    let horizon = chrono::Utc::now()
        - chrono::Duration::from_std(state.gate_retention).unwrap_or(chrono::Duration::MAX);
    if dhanman_connectors::retention::made_at(event_id).is_some_and(|at| at < horizon) {
        return Ok(());
    }
    // Subscribed before the first look: a batch committed while it runs is heard.
    let mut batches = state.applied.batches.subscribe();
    if has_applied(&state.pool, processor, event_id).await? {
        return Ok(());
    }
    let _permit = state
        .applied
        .waiters
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::Busy(format!(
                "{MAX_WAITERS} queries are already waiting for the pipeline; retry shortly"
            ))
        })?;
    let deadline = Instant::now() + state.consistency_wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::NotYetConsistent(format!(
                "the {processor} processor has not applied event {event_id} within {} ms; retry later",
                state.consistency_wait.as_millis()
            )));
        }
        let heard = tokio::time::timeout(left.min(Duration::from_secs(1)), batches.changed()).await;
        if let Ok(Err(_)) = heard {
            // No listener any more: look again now and then.
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
        if has_applied(&state.pool, processor, event_id).await? {
            return Ok(());
        }
    }
}
