//! Read-your-writes: a command returns its event id as a consistency token; a query given
//! `?consistent_with=<token>` waits, bounded, until the processor behind the query (the
//! ledger, for most) has applied that event.
//!
//! A waiting query holds no database connection: it registers its token, looks once, then
//! sleeps. When a processor says it committed a batch (`NOTIFY dhanman_applied`, sent in
//! each batch's transaction; one listening connection per API process), the waiters of the
//! events the notification names are woken at once; a batch too large to name its events
//! names only its processor, and one look for every token waiting on that processor wakes
//! those it finds applied: a batch costs one query at most, not one per waiter
//! ([`dhanman_processors::applied::notification`]). A waiter also looks on its own each
//! second while nothing wakes it (a notification lost while the listener reconnects). At most
//! [`MAX_WAITERS`] queries wait at once per process; more are answered 503 with
//! `Retry-After` rather than queued, so tokens that will never be applied (a random uuid)
//! cannot pile up. Whether an event is applied is the processors' to say ([`has_applied`],
//! [`applied_among`]); parsing the token and bounding the wait are this module's.
//!
//! A wait's first look is taken in [`memory`] instead of the database when it can be: the
//! events named by the batches heard lately answer for an event made since the listener
//! began (a command's token read at once, the usual case), so such a read costs the
//! database no look at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dhanman_processors::applied::{applied_among, has_applied, heard};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, oneshot};
use uuid::Uuid;

use crate::{ApiError, AppState};

pub mod memory;

/// The channel processors notify on after each committed batch.
pub const CHANNEL: &str = "dhanman_applied";

/// Queries that may wait for consistency at once, per API process: three quarters of the
/// requests it serves at once ([`crate::MAX_IN_FLIGHT`]), so waits never crowd out commands.
/// A wait costs no connection and no query of its own per batch, only its registration.
pub const MAX_WAITERS: usize = crate::MAX_IN_FLIGHT / 4 * 3;

/// Waits for a token, by processor and by how each ended (a counter): `applied` (its first
/// look found the event applied), `woken` (a batch's notification or look), `looked` (its
/// own look), `expired` (answered 409), `refused` (answered 503: [`MAX_WAITERS`] waiting),
/// `failed` (a look's query failed).
pub const WAITS: &str = "dhanman_consistency_waits_total";

/// A wait from its token's registration to its end, by processor (a histogram).
pub const WAIT_DURATION: &str = "dhanman_consistency_wait_duration_seconds";

/// First looks by processor and by where they were taken (a counter): `memory` (the events
/// heard lately, no query) or `database`.
pub const FIRST_LOOKS: &str = "dhanman_consistency_first_looks_total";

/// Queries waiting now past their first look (a gauge, at most [`MAX_WAITERS`]).
pub const WAITING: &str = "dhanman_consistency_waiting";

/// 1 while the listener hears the processors' batches, else 0 (a gauge): at 0 a wait is
/// answered by its own look, within a second.
pub const LISTENING: &str = "dhanman_consistency_listening";

/// Tokens waited on: per processor, per event, the senders that wake its waiters.
type Pending = HashMap<String, HashMap<Uuid, Vec<oneshot::Sender<()>>>>;

/// What waiting queries share: the tokens waited on, the processors heard from since the
/// last look, and the permits to wait.
#[derive(Clone, Default)]
pub struct Applied {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Processors that committed a batch since their waiters' tokens were last looked up.
    heard: Mutex<Vec<String>>,
    wake: Notify,
    waiters: Semaphore,
    /// Whether the listener is listening now.
    listening: AtomicBool,
    /// Waits answered by a batch's look (not by their own).
    woken: AtomicU64,
    /// The events the batches heard lately applied.
    memory: Mutex<memory::Memory>,
    /// Waits whose first look memory answered.
    remembered: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            pending: Mutex::default(),
            heard: Mutex::default(),
            wake: Notify::new(),
            waiters: Semaphore::new(MAX_WAITERS),
            listening: AtomicBool::new(false),
            woken: AtomicU64::new(0),
            memory: Mutex::default(),
            remembered: AtomicU64::new(0),
        }
    }
}

impl Applied {
    /// Listens on [`CHANNEL`] until the task is dropped, reconnecting after a failure, and
    /// looks up the tokens waiting on each processor heard from.
    pub async fn listen(self, pool: PgPool) {
        metrics::gauge!(LISTENING).set(0.0);
        metrics::gauge!(WAITING).set(0.0);
        tokio::join!(self.hear(&pool), self.look(&pool));
    }

    async fn hear(&self, pool: &PgPool) {
        loop {
            let listening = async {
                let mut listener = dhanman_plumbing::postgres::listener(pool).await?;
                listener.listen(CHANNEL).await?;
                lock(&self.shared.memory).listening(Some(SystemTime::now()));
                self.shared.listening.store(true, Ordering::Relaxed);
                metrics::gauge!(LISTENING).set(1.0);
                // Batches committed while no one listened: look for every waiter now.
                let waited_on: Vec<String> = lock(&self.shared.pending).keys().cloned().collect();
                if !waited_on.is_empty() {
                    *lock(&self.shared.heard) = waited_on;
                    self.shared.wake.notify_one();
                }
                // `try_recv`, not `recv`: a connection lost is this loop's to see (`None`),
                // not reconnected behind it, so that memory is trusted only while every
                // batch's notification is heard.
                while let Some(notification) = listener.try_recv().await? {
                    let (processor, applied) = heard(notification.payload());
                    // Remembered before its waiters are woken: a waiter registered after
                    // the wake finds the event in memory.
                    lock(&self.shared.memory).heard(
                        processor,
                        applied.as_deref(),
                        SystemTime::now(),
                    );
                    if let Some(applied) = applied {
                        self.woken(processor, &applied);
                        continue;
                    }
                    let waited_on = lock(&self.shared.pending).contains_key(processor);
                    if waited_on {
                        let mut heard = lock(&self.shared.heard);
                        if !heard.iter().any(|p| p == processor) {
                            heard.push(processor.to_string());
                        }
                        self.shared.wake.notify_one();
                    }
                }
                Ok(())
            };
            let failed: Result<(), sqlx::Error> = listening.await;
            self.shared.listening.store(false, Ordering::Relaxed);
            metrics::gauge!(LISTENING).set(0.0);
            lock(&self.shared.memory).listening(None);
            match failed {
                Err(e) => tracing::debug!(error = %e, "consistency listener failed; reconnecting"),
                Ok(()) => tracing::debug!("consistency listener lost its connection; reconnecting"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One look per processor heard from, for all the tokens waiting on it; batches heard
    /// during a look are looked at together after it.
    async fn look(&self, pool: &PgPool) {
        loop {
            self.shared.wake.notified().await;
            let heard = std::mem::take(&mut *lock(&self.shared.heard));
            for processor in heard {
                let ids: Vec<Uuid> = match lock(&self.shared.pending).get(&processor) {
                    Some(events) => events.keys().copied().collect(),
                    None => continue,
                };
                match applied_among(pool, &processor, &ids).await {
                    Ok(applied) => self.woken(&processor, &applied),
                    // The waiters look on their own within a second.
                    Err(e) => tracing::debug!(error = %e, "looking up consistency tokens"),
                }
            }
        }
    }

    /// Wakes the waiters of `applied` events of `processor`.
    fn woken(&self, processor: &str, applied: &[Uuid]) {
        let mut pending = lock(&self.shared.pending);
        let Some(events) = pending.get_mut(processor) else {
            return;
        };
        for id in applied {
            for waiter in events.remove(id).into_iter().flatten() {
                let _ = waiter.send(());
            }
        }
        if events.is_empty() {
            pending.remove(processor);
        }
    }

    /// Whether committed batches are heard now (the listener is connected and listening).
    pub fn is_listening(&self) -> bool {
        self.shared.listening.load(Ordering::Relaxed)
    }

    /// Tokens waited on now.
    pub fn waiting(&self) -> usize {
        lock(&self.shared.pending).values().map(HashMap::len).sum()
    }

    /// Waits answered since the process started by a batch's notification: the events it
    /// named, or the look it caused (the rest were applied at their first look, found by
    /// their own look, or expired).
    pub fn woken_total(&self) -> u64 {
        self.shared.woken.load(Ordering::Relaxed)
    }

    /// Waits whose first look memory answered, since the process started.
    pub fn remembered_total(&self) -> u64 {
        self.shared.remembered.load(Ordering::Relaxed)
    }

    /// Events remembered now.
    pub fn remembered_now(&self) -> usize {
        lock(&self.shared.memory).len()
    }

    /// Registers a waiter for `event_id` of `processor`, until the registration is dropped.
    fn register<'a>(&'a self, processor: &'a str, event_id: Uuid) -> Registration<'a> {
        let (wake, woken) = oneshot::channel();
        lock(&self.shared.pending)
            .entry(processor.to_string())
            .or_default()
            .entry(event_id)
            .or_default()
            .push(wake);
        Registration {
            applied: self,
            processor,
            event_id,
            woken,
        }
    }
}

/// A waiter's place among the tokens waited on; dropped (answered, given up, or the request
/// gone), it is forgotten, so tokens never applied do not pile up.
struct Registration<'a> {
    applied: &'a Applied,
    processor: &'a str,
    event_id: Uuid,
    woken: oneshot::Receiver<()>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.woken.close();
        let mut pending = lock(&self.applied.shared.pending);
        let Some(events) = pending.get_mut(self.processor) else {
            return;
        };
        if let Some(waiters) = events.get_mut(&self.event_id) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                events.remove(&self.event_id);
            }
        }
        if events.is_empty() {
            pending.remove(self.processor);
        }
    }
}

/// The lock of shared state no code panics while holding.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let Some(wait) = Wait::begin(state, processor, token)? else {
        return Ok(());
    };
    let applied = match wait.remembered() {
        Some(applied) => applied,
        None => has_applied(&state.pool, processor, wait.event_id).await?,
    };
    wait.finish(applied).await
}

/// A wait for a token, begun: registered before its first look, which the caller makes
/// (with [`has_applied`], or inside its own read, in one statement) and hands to
/// [`Wait::finish`]. A batch committed between the two wakes it.
pub struct Wait<'a> {
    state: &'a AppState,
    processor: &'a str,
    event_id: Uuid,
    registration: Registration<'a>,
    begun: Instant,
}

impl<'a> Wait<'a> {
    /// Parses `token` (400 naming `consistent_with`) and registers the wait; `None` when
    /// there is nothing to wait for (no token, or one made before the gate's retention).
    pub fn begin(
        state: &'a AppState,
        processor: &'a str,
        token: Option<&str>,
    ) -> Result<Option<Wait<'a>>, ApiError> {
        let Some(token) = token else { return Ok(None) };
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
            return Ok(None);
        }
        Ok(Some(Wait {
            state,
            processor,
            event_id,
            registration: state.applied.register(processor, event_id),
            begun: Instant::now(),
        }))
    }

    /// The event waited for.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The first look, taken in memory, when memory can answer ([`memory`]); `None`: the
    /// caller looks in the database. (Taken after the registration, so a batch heard
    /// between the two is either remembered already or wakes the waiter.)
    pub fn remembered(&self) -> Option<bool> {
        let answer = self.look_in_memory();
        let source = if answer.is_some() {
            "memory"
        } else {
            "database"
        };
        metrics::counter!(FIRST_LOOKS, "processor" => self.processor.to_owned(), "source" => source)
            .increment(1);
        answer
    }

    fn look_in_memory(&self) -> Option<bool> {
        let made = SystemTime::from(dhanman_connectors::retention::made_at(self.event_id)?);
        let answer = lock(&self.state.applied.shared.memory).answer(
            self.processor,
            self.event_id,
            made,
            SystemTime::now(),
        )?;
        self.state
            .applied
            .shared
            .remembered
            .fetch_add(1, Ordering::Relaxed);
        Some(answer)
    }

    /// Returns at once when the first look found the event `applied`, else waits (bounded)
    /// for a batch's look, or its own each second, to find it. Counted in [`WAITS`] and
    /// [`WAIT_DURATION`].
    pub async fn finish(self, applied: bool) -> Result<(), ApiError> {
        let (processor, begun) = (self.processor.to_owned(), self.begun);
        let (outcome, answer) = self.end(applied).await;
        metrics::counter!(WAITS, "processor" => processor.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(WAIT_DURATION, "processor" => processor)
            .record(begun.elapsed().as_secs_f64());
        answer
    }

    /// How the wait ended ([`WAITS`]'s `outcome`) and its answer.
    async fn end(self, applied: bool) -> (&'static str, Result<(), ApiError>) {
        let Wait {
            state,
            processor,
            event_id,
            mut registration,
            ..
        } = self;
        if applied {
            return ("applied", Ok(()));
        }
        let Ok(_permit) = state.applied.shared.waiters.try_acquire() else {
            return (
                "refused",
                Err(ApiError::Busy(format!(
                    "{MAX_WAITERS} queries are already waiting for the pipeline; retry shortly"
                ))),
            );
        };
        let _waiting = Waiting::counted();
        let deadline = Instant::now() + state.consistency_wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (
                    "expired",
                    Err(ApiError::NotYetConsistent(format!(
                        "the {processor} processor has not applied event {event_id} within {} ms; retry later",
                        state.consistency_wait.as_millis()
                    ))),
                );
            }
            match tokio::time::timeout(left.min(Duration::from_secs(1)), &mut registration.woken)
                .await
            {
                Ok(Ok(())) => {
                    state.applied.shared.woken.fetch_add(1, Ordering::Relaxed);
                    return ("woken", Ok(()));
                }
                // Forgotten without an answer (cannot happen while this waits); look on its own.
                Ok(Err(_)) => tokio::time::sleep(left.min(Duration::from_millis(250))).await,
                Err(_) => {}
            }
            match has_applied(&state.pool, processor, event_id).await {
                Ok(true) => return ("looked", Ok(())),
                Ok(false) => {}
                Err(e) => return ("failed", Err(e.into())),
            }
        }
    }
}

/// A query counted in [`WAITING`] while this lives (a wait given up, its request gone, is
/// uncounted too).
struct Waiting;

impl Waiting {
    fn counted() -> Self {
        metrics::gauge!(WAITING).increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!(WAITING).decrement(1.0);
    }
}
