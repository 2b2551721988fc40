-- Columns that no query filters, joins or groups on, and that are wide (record payloads,
-- rendered emails, stored responses), get no planner statistics: ANALYZE (automatic, after
-- every so many writes) otherwise spends most of its time sampling and detoasting them,
-- a burst of CPU that stalls everything else on a small machine.
alter table outbox
    alter column payload set statistics 0,
    alter column raw_value set statistics 0,
    alter column headers set statistics 0,
    alter column message_key set statistics 0,
    alter column parked_reason set statistics 0;
alter table notification_deliveries
    alter column subject set statistics 0,
    alter column body_text set statistics 0,
    alter column body_html set statistics 0,
    alter column message_id set statistics 0,
    alter column last_error set statistics 0,
    alter column reason set statistics 0;
alter table idempotency_keys
    alter column request_hash set statistics 0,
    alter column response_body set statistics 0;
alter table journal_entries
    alter column description set statistics 0,
    alter column correlation_id set statistics 0;
alter table invoices
    alter column description set statistics 0,
    alter column void_reason set statistics 0;
