-- Corrections by replay (`dhanman replay --processor ledger --correct`): when a posting rule
-- changes, an entry posted under the old rule is reversed by an entry of its own
-- (reference_type 'reversal', reference_id the entry it reverses) and replaced by the entry
-- today's rule makes (reference_type 'correction', reference_id the entry it replaces).
-- Both keep the source event of the entry they stand for; their ids are derived from the
-- entry they act on, so a correction is posted once however often it is run. An original
-- entry keeps its event's id.
alter table journal_entries drop constraint journal_entries_check;
alter table journal_entries add constraint journal_entries_own_event
    check (id = source_event_id or reference_type in ('reversal', 'correction'));

-- The corrections of an event's entry, found by its event (an original is found by its
-- primary key). Partial: the ledger's own inserts never touch it.
create index journal_entries_corrections on journal_entries (source_event_id)
    where id <> source_event_id;
