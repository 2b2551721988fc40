-- Outbox rows whose record is derived wholly from immutable rows written in the same
-- transaction: `derived_from` names the source row (for `LedgerEntryPosted`, the journal
-- entry), and the relay builds the record from it at publish time. The row is still written
-- in the transaction that makes the change, so nothing is announced that was not committed
-- and nothing committed goes unannounced; only the copy of the payload is saved.
alter table outbox add column derived_from uuid;
alter table outbox drop constraint outbox_check;
alter table outbox add constraint outbox_has_value check (
    (record_name is not null and schema_version is not null
        and ((payload is not null)::int + (derived_from is not null)::int) = 1
        and raw_value is null)
    or (raw_value is not null and payload is null and derived_from is null)
);
