-- Lag samples cover every consumer group on the cluster (not only the processors'), with
-- where the group's offsets came from, its state on the group coordinator, and the member
-- holding each partition, as the coordinator described them at the time.
alter table lag_samples
    add column offsets_in text not null default 'postgres' check (offsets_in in ('postgres', 'kafka')),
    add column state text,
    add column consumer_id text,
    add column client_id text,
    add column host text;
