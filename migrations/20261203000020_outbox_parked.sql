-- An outbox row the relay can never publish as it is (its payload does not encode under
-- its schema, the broker refuses the record as too large or invalid) is parked, with the
-- reason, instead of stopping every row behind it. Parked rows are listed by
-- `dhanman outbox parked`, counted by `dhanman_outbox_parked`, and put back in line by
-- `dhanman outbox unpark` once the cause is fixed.
alter table outbox
    add column parked_at timestamptz,
    add column parked_reason text;
drop index outbox_pending;
create index outbox_pending on outbox (id) where published_at is null and parked_at is null;
create index outbox_parked on outbox (id) where parked_at is not null and published_at is null;
