//! Kafka client configuration shared by every part that talks to the broker.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

/// The client id a part of the pipeline gives the broker: the part, the host and the
/// process, so that `kafka-consumer-groups --describe` and `dhanman offsets show` tell the
/// members of a group apart (`dhanman-ledger-host-4242`).
pub fn client_id(part: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("dhanman-{part}-{host}-{}", std::process::id())
}

/// How long the producer waits for more records of a partition before sending. Its writer,
/// the relay, hands over a whole batch in well under a millisecond and then waits for every
/// acknowledgement, so each batch waits this long once: 1 ms keeps a batch in one request
/// per partition without adding 5 ms to every command's way to the ledger.
pub const LINGER_MS: &str = "1";

/// Base client configuration for a bootstrap list.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "dhanman")
        // The development broker listens and advertises on 127.0.0.1 only.
        .set("broker.address.family", "v4");
    config
}

/// An idempotent producer: retries never duplicate or reorder records of a partition.
/// It waits [`LINGER_MS`] for more records before sending a partition's batch.
pub fn idempotent_producer(bootstrap: &str) -> Result<FutureProducer, KafkaError> {
    client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
        .set("compression.type", "none")
        .set("message.timeout.ms", "30000")
        .create()
}

/// A record's headers, names and values, in their order; and, if there was one, why a
/// header could not be read. Kafka's protocol says a header's name is UTF-8, but a producer
/// need not keep to it, and rdkafka panics on reading such a name: each header is read on
/// its own under `catch_unwind`, so a hostile record costs its unreadable headers (and is
/// poison to whoever needs all of them), never the process.
pub fn headers_of<M: rdkafka::message::Message>(
    message: &M,
) -> (Vec<(String, Vec<u8>)>, Option<String>) {
    use rdkafka::message::Headers;
    let Some(headers) = message.headers() else {
        return (Vec::new(), None);
    };
    let mut read = Vec::with_capacity(headers.count());
    let mut unreadable = None;
    for i in 0..headers.count() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| headers.try_get(i))) {
            Ok(Some(h)) => read.push((h.key.to_string(), h.value.unwrap_or_default().to_vec())),
            Ok(None) => {}
            Err(_) => {
                unreadable.get_or_insert_with(|| {
                    format!("header {i} has a name that is not UTF-8 (Kafka's header names are)")
                });
            }
        }
    }
    (read, unreadable)
}
