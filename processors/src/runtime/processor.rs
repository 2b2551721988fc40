//! What a processor is to the runtime: the record it is handed, detached from the
//! consumer, and the trait it implements (a name, the topics it reads, what it does with
//! new events inside the batch's transaction).

use futures_util::future::BoxFuture;
use rdkafka::message::Message;
use sqlx::PgConnection;

use dhanman_schemas::Event;

use super::ApplyError;

/// One record as read from Kafka, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// What makes the record poison before its value is even decoded: a header rdkafka
    /// cannot read (see [`dhanman_plumbing::kafka::headers_of`]).
    pub defect: Option<String>,
}

impl Incoming {
    pub fn from_message<M: Message>(m: &M) -> Self {
        let (headers, defect) = dhanman_plumbing::kafka::headers_of(m);
        Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            defect,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A processor: what it reads and what it does with new events, inside the batch's
/// transaction. Everything else (batching, offsets, retries, DLQ) is the runtime's.
pub trait Processor: Send + Sync + 'static {
    /// Stable name: the consumer group is `dhanman.<name>` and `processed_events` rows
    /// (and `applied_events`) carry it.
    fn name(&self) -> &str;
    fn topics(&self) -> Vec<String>;
    /// Whether `event`'s own effects are its exactly-once gate: applying it writes a row
    /// whose key is the event's id (a second attempt writes nothing), and the view
    /// `applied_events` shows that row as the event applied. Such an event gets no
    /// `processed_events` row and is not looked up first: the runtime hands it to
    /// [`Processor::apply`] as it is, and `apply` leaves it alone if its row is there and
    /// counts it in [`Applied::before`]. None by default.
    fn gated_by_effects(&self, event: &Event) -> bool {
        let _ = event;
        false
    }
    /// Whether `event` is one this processor does nothing with (a record type on its topics
    /// that it neither writes nor sends anything for): such an event gets no gate row and is
    /// not handed to [`Processor::apply`]; reading it again would do nothing either. It is
    /// counted as `ignored`. A processor whose reads take consistency tokens ignores
    /// nothing: its gate rows are what end a wait for any event on its topics. None by
    /// default.
    fn ignores(&self, event: &Event) -> bool {
        let _ = event;
        false
    }
    /// Applies events this processor has never applied (or, for those gated by their
    /// effects, may have), in offset order per partition. Must write only through `conn`.
    /// A [`ApplyError::Transient`] failure retries the batch; a [`ApplyError::Poison`] one
    /// (and a panic) marks the batch's events for one-by-one isolation, and the one that
    /// fails alone is dead-lettered.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> impl Future<Output = std::result::Result<Applied, ApplyError>> + Send;
}

/// What [`Processor::apply`] found: how many of the events it was handed it had applied
/// before, found by their own effects' keys (only events [`Processor::gated_by_effects`]
/// can be; the runtime's gate rows filter the others). The runtime counts them as
/// duplicates, not as applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub before: usize,
}

/// A processor chosen at run time, by name ([`crate::catalog`]): any [`Processor`] boxed.
/// Its `apply` is the boxed processor's, behind one allocation per call.
pub struct BoxedProcessor(Box<dyn DynProcessor>);

impl BoxedProcessor {
    pub fn new(processor: impl Processor) -> Self {
        BoxedProcessor(Box::new(processor))
    }
}

/// [`Processor`] in a form that can be boxed; every processor is one.
trait DynProcessor: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn topics(&self) -> Vec<String>;
    fn gated_by_effects(&self, event: &Event) -> bool;
    fn ignores(&self, event: &Event) -> bool;
    fn apply_boxed<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, std::result::Result<Applied, ApplyError>>;
}

impl<P: Processor> DynProcessor for P {
    fn name(&self) -> &str {
        Processor::name(self)
    }

    fn topics(&self) -> Vec<String> {
        Processor::topics(self)
    }

    fn gated_by_effects(&self, event: &Event) -> bool {
        Processor::gated_by_effects(self, event)
    }

    fn ignores(&self, event: &Event) -> bool {
        Processor::ignores(self, event)
    }

    fn apply_boxed<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, std::result::Result<Applied, ApplyError>> {
        Box::pin(Processor::apply(self, conn, events))
    }
}

impl Processor for BoxedProcessor {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn topics(&self) -> Vec<String> {
        self.0.topics()
    }

    fn gated_by_effects(&self, event: &Event) -> bool {
        self.0.gated_by_effects(event)
    }

    fn ignores(&self, event: &Event) -> bool {
        self.0.ignores(event)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> std::result::Result<Applied, ApplyError> {
        self.0.apply_boxed(conn, events).await
    }
}
