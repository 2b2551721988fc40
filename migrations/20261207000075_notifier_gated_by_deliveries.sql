-- The notifier's delivery log is its own gate, as the journal is the ledger's: every event
-- it acts on writes one row keyed by the event's id (`notification_deliveries`' primary key
-- leads with it), and its batch looks for rows of its events before planning any. It
-- writes no `processed_events` row for them, and `applied_events` shows its deliveries as
-- the events applied. (`union`: an event applied before the notifier stopped writing those
-- rows has both.)
create or replace view applied_events (processor, event_id) as
    select processor, event_id from processed_events
    union
    select 'ledger', id from journal_entries where id = source_event_id
    union
    select 'notifier', event_id from notification_deliveries;
