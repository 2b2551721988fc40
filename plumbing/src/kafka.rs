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
