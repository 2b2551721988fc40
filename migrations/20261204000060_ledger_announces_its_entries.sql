-- The ledger writes what it announces: each `LedgerEntryPosted` outbox row now carries its
-- record (`payload`) and its headers, as every other row does, and the relay no longer reads
-- the ledger's tables to build it. `derived_from` stays as the row's provenance (the journal
-- entry it announces).
alter table outbox drop constraint outbox_has_value;

-- Rows written before this change and not yet published get their record now, built from
-- the (immutable) entry and postings exactly as the relay built it: the envelope's
-- `occurred_at` is the entry's `posted_at` in whole milliseconds, lines in posting order.
update outbox o
   set payload = jsonb_build_object(
           'event_id', o.event_id,
           'occurred_at', floor(extract(epoch from j.posted_at) * 1000)::bigint,
           'organization_id', j.organization_id,
           'correlation_id', coalesce(j.correlation_id, ''),
           'causation_id', j.source_event_id::text,
           'entry_id', j.id,
           'source_event_id', j.source_event_id,
           'reference_type', j.reference_type,
           'reference_id', j.reference_id,
           'description', j.description,
           'currency', j.currency,
           'lines', (select jsonb_agg(jsonb_build_object(
                                'account_code', p.account_code,
                                'party_type', p.party_type,
                                'party_id', p.party_id,
                                'debit', p.debit::text,
                                'credit', p.credit::text) order by p.id)
                       from postings p where p.entry_id = j.id)),
       headers = jsonb_build_object(
           'event_id', o.event_id::text,
           'record_name', o.record_name,
           'correlation_id', coalesce(j.correlation_id, '')) || coalesce(o.headers, '{}'::jsonb)
  from journal_entries j
 where j.id = o.derived_from and o.payload is null and o.published_at is null;

-- A record row carries its payload; only rows published before this change may lack it.
alter table outbox add constraint outbox_has_value check (
    (record_name is not null and schema_version is not null and raw_value is null
        and (payload is not null or (derived_from is not null and published_at is not null)))
    or (raw_value is not null and payload is null and derived_from is null)
);
