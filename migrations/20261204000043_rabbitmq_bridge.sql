-- The RabbitMQ bridge (`dhanman bridge rabbitmq`).
--
-- Inbound: one row per AMQP message applied, written in the transaction of the command it
-- ran; a redelivered message finds its row and changes nothing. Its key is the message's
-- `message_id` (or, for a publisher that sets none, `sha256:` of its type and body).
-- Dead-lettered messages have no row: once the cause is fixed, the same message applies.
create table rabbitmq_inbound (
    message_id text primary key,
    organization_id uuid not null,
    message_type text not null,
    queue text not null,
    -- The event or command the message caused (none: an approval that leaves the order
    -- waiting for another).
    event_id uuid,
    correlation_id text not null,
    received_at timestamptz not null default now()
);

-- Outbound: one row per event published to RabbitMQ and confirmed by it; an event read
-- again from Kafka (a redelivery, a rewind) is not published again.
create table rabbitmq_outbound (
    event_id uuid primary key,
    message_type text not null,
    published_at timestamptz not null default now()
);
