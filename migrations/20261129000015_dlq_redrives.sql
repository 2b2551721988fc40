-- Dead letters sent back to their source topic: one row each, written with the outbox row
-- that carries it, so a dead letter is redriven once however often the command runs.
create table dlq_redrives (
    dlq_topic text not null,
    partition integer not null,
    "offset" bigint not null,
    source_topic text not null,
    source_partition integer,
    source_offset bigint,
    outbox_event_id uuid not null,
    redriven_at timestamptz not null default now(),
    primary key (dlq_topic, partition, "offset")
);
-- Several processors can dead-letter one source record; it is sent back once.
create index dlq_redrives_source on dlq_redrives (source_topic, source_partition, source_offset);
