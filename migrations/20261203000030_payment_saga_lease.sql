-- The payment saga's lease and its late charges.
--
-- One driver at a time: `drive` takes the lease in one UPDATE (free, expired, or held by
-- a process that is gone), renews it before every gateway call and releases it when done.
-- A driver that cannot take it calls nothing and answers the saga's state.
--
--   lease_owner  the drive holding it ("<pid>:<drive id>"), null when free
--   lease_until  when it lapses unless renewed: longer than one gateway call with all its
--                retries, so a live driver never loses it mid-call
--   lease_lock   the owner process's liveness key: that process holds the session-level
--                advisory lock (1684565358, lease_lock) for as long as it lives, so the
--                lease of a process that died is free at once, not only when it lapses
alter table payment_sagas
    add column lease_owner text,
    add column lease_until timestamptz,
    add column lease_lock integer,
    -- A successful charge that landed on a saga already final without it (failed, or
    -- ended with another charge): refunded under `dhanman-late-refund-<saga id>`, never
    -- kept. Pending while late_charge_id is set and late_refund_id is not.
    add column late_charge_id text,
    add column late_refund_id text;

-- What recovery scans besides unfinished sagas: late charges not yet refunded.
create index payment_sagas_late_charge on payment_sagas (updated_at)
    where late_charge_id is not null and late_refund_id is null;
