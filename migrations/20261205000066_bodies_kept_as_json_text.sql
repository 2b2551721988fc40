-- Record payloads, their headers and stored responses are written once, read back whole
-- and never searched by key: `json` keeps them as the text written (checked to be JSON),
-- where `jsonb` parsed each into its binary form on the way in and printed it again on the
-- way out. Parsing into `jsonb` was the largest single cost of a batch of invoices in
-- Postgres (a fifth of its time, `perf`); `json` only checks the text. The operators the
-- tools use (`->`, `->>`) work on both.
alter table outbox
    alter column payload type json using payload::json,
    alter column headers drop default,
    alter column headers type json using headers::json,
    alter column headers set default '{}'::json,
    alter column payload set statistics 0,
    alter column headers set statistics 0;
alter table idempotency_keys
    alter column response_body type json using response_body::json,
    alter column response_body set statistics 0;
