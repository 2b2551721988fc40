-- Lag samples: each group's committed offset and each partition's log end at a time, kept
-- for a few trend windows, from which lag trends, consumption rates and times to drain
-- are computed.
create table lag_samples (
    sampled_at timestamptz not null,
    group_id text not null,
    topic text not null,
    partition integer not null,
    committed bigint not null,
    log_end bigint not null,
    -- Age of the oldest unconsumed record at the time, in seconds.
    lag_seconds double precision not null,
    primary key (group_id, topic, partition, sampled_at)
);
create index lag_samples_time on lag_samples (sampled_at);
