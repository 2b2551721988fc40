//! W3C trace context (`traceparent`) carried with the work: the API accepts or starts a
//! trace per request, every outbox row records the span that wrote it, the relay copies it
//! into the Kafka headers, and a processor continues the trace of each event it applies, so
//! the events it emits belong to the same trace as a child span.
//!
//! The context travels in a tokio task-local set around a request ([`in_request`]) or a
//! processor's batch ([`in_batch`]); code in between (command handlers, `apply`) needs no
//! extra argument. [`crate::outbox::enqueue`] reads it.

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;

/// The HTTP and Kafka header name.
pub const HEADER: &str = "traceparent";

/// A parsed `traceparent`: `00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    // Lowercase only, as the spec says; uppercase is a malformed header.
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn nonzero_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl TraceParent {
    /// Parses a header value; `None` for anything malformed (which callers replace with a
    /// new trace rather than refuse). Versions other than `00` are read by their first four
    /// fields, as the spec asks of a version-00 parser; version `ff` is invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = hex::<1>(parts.next()?)?[0];
        let trace_id = u128::from_be_bytes(hex::<16>(parts.next()?)?);
        let span_id = u64::from_be_bytes(hex::<8>(parts.next()?)?);
        let flags = hex::<1>(parts.next()?)?[0];
        let rest = parts.next();
        let valid = match version {
            0xff => false,
            0 => rest.is_none(),
            _ => true,
        };
        (valid && trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace (sampled), for work that arrives without one.
    pub fn new_root() -> Self {
        let mut trace_id: u128 = 0;
        while trace_id == 0 {
            trace_id = u128::from_be_bytes(*Uuid::new_v4().as_bytes());
        }
        TraceParent {
            trace_id,
            span_id: nonzero_span_id(),
            flags: 0x01,
        }
    }

    /// A span of the same trace whose parent is this one.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: nonzero_span_id(),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits: what ties log lines of one trace together.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Where the work running on this task belongs in a trace.
#[derive(Debug, Clone)]
enum Context {
    /// An API request: its server span.
    Request(TraceParent),
    /// A processor's batch: the span of each event being applied, by event id; events it
    /// emits name their cause in `causation_id`.
    Batch(HashMap<Uuid, TraceParent>),
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs a request's work with its span as the trace context of whatever it writes.
pub async fn in_request<F: Future>(span: TraceParent, work: F) -> F::Output {
    CONTEXT.scope(Context::Request(span), work).await
}

/// Runs a batch's work; `spans` maps each event id being applied to its consumer span.
pub async fn in_batch<F: Future>(spans: HashMap<Uuid, TraceParent>, work: F) -> F::Output {
    CONTEXT.scope(Context::Batch(spans), work).await
}

/// The span of the request being served or of the event being applied that caused
/// `causation_id`, if the task runs in one.
pub fn current(causation_id: Option<&str>) -> Option<TraceParent> {
    CONTEXT
        .try_with(|context| match context {
            Context::Request(span) => Some(*span),
            Context::Batch(spans) => causation_id
                .and_then(|id| id.parse::<Uuid>().ok())
                .and_then(|id| spans.get(&id).copied()),
        })
        .ok()
        .flatten()
}

/// The `traceparent` an outbox row records: the current span (see [`current`]), or a new
/// trace for work that runs outside any (scheduled jobs, timers).
pub fn for_outbox(causation_id: Option<&str>) -> TraceParent {
    current(causation_id).unwrap_or_else(TraceParent::new_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let tp = TraceParent::parse(SAMPLE).expect("valid");
        assert_eq!(tp.to_string(), SAMPLE);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceParent::parse(&format!("01{}-more", &SAMPLE[2..])).is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent = TraceParent::parse(SAMPLE).expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        let root = TraceParent::new_root();
        assert_ne!(root.trace_id(), parent.trace_id());
        assert!(TraceParent::parse(&root.to_string()).is_some());
    }

    #[tokio::test]
    async fn the_context_follows_the_task() {
        let request = TraceParent::new_root();
        let seen = in_request(request, async { current(None) }).await;
        assert_eq!(seen, Some(request));
        assert_eq!(current(None), None);

        let cause = Uuid::now_v7();
        let span = TraceParent::new_root();
        let spans = HashMap::from([(cause, span)]);
        let (known, unknown) = in_batch(spans, async {
            (
                current(Some(&cause.to_string())),
                current(Some(&Uuid::now_v7().to_string())),
            )
        })
        .await;
        assert_eq!(known, Some(span));
        assert_eq!(unknown, None);
    }
}
