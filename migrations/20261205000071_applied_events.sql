-- What each processor has applied, as one relation: the gate rows (`processed_events`), and
-- the ledger's own journal entries, which are its gate for the events that post one (an
-- entry's id is its event's, and the journal's primary key refuses a second): the ledger
-- writes no gate row for those. Consistency tokens, replay surveys and the runtime's look
-- before applying read this. (`union`: an event applied before the ledger stopped writing
-- those rows has both.)
create view applied_events (processor, event_id) as
    select processor, event_id from processed_events
    union
    select 'ledger', id from journal_entries where id = source_event_id;
