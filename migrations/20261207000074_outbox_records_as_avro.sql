-- A record row may keep its record as its Avro datum (`avro`: the bytes a published record
-- carries after the Confluent header, under `record_name` and `schema_version`) instead of
-- its JSON (`payload`); the relay frames it with the registry's id and publishes it as it
-- is. The ledger writes its `LedgerEntryPosted` announcements so: about 400 bytes a row
-- where the JSON, which spells every field name and id as text, took about 760, on the
-- table that took the largest share of the processors' WAL.
alter table outbox add column avro bytea;
alter table outbox alter column avro set statistics 0;

-- A record row carries one form of its record (only rows published before the ledger
-- stored its records may carry none); a forwarded record, its bytes only.
alter table outbox drop constraint outbox_has_value;
alter table outbox add constraint outbox_has_value check (
    (record_name is not null and schema_version is not null and raw_value is null
        and num_nonnulls(payload, avro) <= 1
        and (payload is not null or avro is not null or derived_from is not null))
    or (raw_value is not null and payload is null and avro is null and derived_from is null)
);
