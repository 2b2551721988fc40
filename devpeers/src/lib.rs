//! Peers for development and tests. Mainly a payment gateway (PSP): a small real HTTP
//! server with the contract the payment saga calls, and switches that make it slow, flaky,
//! hanging or forgetful on purpose. Also an SMTP server ([`smtp`]) that keeps what it
//! accepts, for the notifier's tests and the demo.
//!
//! Its state lives in memory only: restarting it forgets every charge, refund and key.
//! Nothing in the pipeline's production path depends on it: only tests, the demo, the
//! benchmark and development run it.
//!
//! # Contract
//!
//! Money is a decimal string with at most two places (`"1500.50"`), answered with exactly
//! two. Error bodies are `{"error": "...", "field": "..."}`, `field` naming the header or
//! body field at fault when there is one.
//!
//! | request | answers |
//! |---|---|
//! | `POST /v1/charges` `{"amount", "currency", "reference", "method": "upi"\|"card"\|"netbanking"}`, header `Idempotency-Key` | 201 the charge; 402 the charge, declined (`"status": "declined"`, `"error"`); 400 no key or not JSON; 422 a bad field; 409 the key was used for a different request; 503 unavailable (nothing charged) |
//! | `POST /v1/charges/{id}/refunds` `{}` or `{"amount"}`, header `Idempotency-Key` | 201 `{"refund_id", "charge_id", "amount", "currency", "status", "created_at"}`; 404 unknown charge; 409 already fully refunded, declined, or key reused; 422 more than is left |
//! | `GET /v1/charges/{id}` | 200 the charge with its refunds; 404 |
//! | `GET /v1/charges?reference=&idempotency_key=` | 200 `{"charges": [...]}`: those for the reference, the one made under the key (none if the key made no charge), all of them without either |
//! | `GET /v1/log` | 200 `{"entries": [...]}`: every charge (declined ones too) and refund made, in order |
//! | `GET /healthz` | 200 `{"status": "ok"}`; 503 when `down` |
//! | `GET /_control`, `PUT /_control` | the [`Switches`]; `PUT` takes any subset of them |
//! | `GET /_requests` | 200 `{"requests": [...]}`: every `/v1` request received, in order of arrival, whatever became of it ([`Received`]) |
//!
//! A charge is `{"charge_id", "status", "amount", "currency", "reference", "method",
//! "created_at", "amount_refunded", "refunds"}` (plus `"error"` when declined).
//!
//! Idempotency: the first request under a key that gets as far as charging (or
//! declining, or refunding) fixes the key's answer. Any later request under that key gets
//! the same status and byte-identical body, with `Idempotent-Replayed: true`, and moves
//! no money; a later request under the key with a different body (or endpoint) gets 409.
//! Requests refused before that (400, 422, 503, a hang) leave the key unused. A card
//! charge whose reference contains "decline" is declined, like a PSP's test card.
//!
//! # Faults
//!
//! [`Switches`] are set at start ([`Args`], `DHANMAN_GATEWAY_*`) and changed at any time
//! with `PUT /_control`. `down` answers 503 to everything but `/_control`; `latency_ms`
//! delays every `/v1` request. The rest act on the requests that move money (charges and
//! refunds) once they have been validated: `error_rate`/`fail_next` answer 503 and do
//! nothing; `timeout_rate`/`hang_next` do nothing and hold the connection for `hang_ms`;
//! `lost_response_rate`/`lose_next` do the work, then close the connection without a
//! response (hyper aborts it on a body that fails before anything was written, so the
//! client sees "connection closed before message completed", never a status);
//! `ambiguous_next` does the work and answers 409 "a request with this Idempotency-Key is
//! in progress" instead of its answer (the key keeps the real answer: a replay gets it),
//! and `busy_next` answers that same 409 without doing anything (the key stays unused).
//! Those two are the ambiguous 4xx: the answer alone does not tell whether money moved,
//! only `GET /v1/charges?idempotency_key=` does.

mod book;
mod charges;
mod cli;
mod error;
mod faults;
mod routes;
pub mod smtp;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use charges::{Charge, LogEntry, LogKind, Method, Received, Refund, Status};
pub use cli::{Args, run};
pub use error::{Error, Result};
pub use faults::Switches;
pub use routes::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use book::Book;
use faults::{Fault, Faults};

/// The gateway's shared state; clones share it.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<Mutex<State>>,
}

struct State {
    book: Book,
    faults: Faults,
    received: Vec<Received>,
}

impl Gateway {
    /// Refuses switches whose rates are outside 0..1 or add up to more than 1.
    pub fn new(switches: Switches) -> Result<Self> {
        Ok(Gateway {
            state: Arc::new(Mutex::new(State {
                book: Book::default(),
                faults: Faults::new(switches)?,
                received: Vec::new(),
            })),
        })
    }

    pub fn switches(&self) -> Switches {
        self.lock().faults.switches.clone()
    }

    /// What `GET /v1/log` answers.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().book.log().to_vec()
    }

    /// What `GET /_requests` answers.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn decide_fault(&self) -> Fault {
        self.lock().faults.decide()
    }

    /// Ignores poisoning: the book is changed only after every check has passed, and a
    /// dev server that keeps answering is more use than one that stops.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn router(gateway: Gateway) -> axum::Router {
    routes::router(gateway)
}

/// Serves the gateway on `listener` until it fails; for running it in-process in tests.
pub async fn serve(listener: tokio::net::TcpListener, switches: Switches) -> Result<()> {
    let gateway = Gateway::new(switches)?;
    axum::serve(listener, router(gateway))
        .await
        .map_err(Error::Serve)
}
