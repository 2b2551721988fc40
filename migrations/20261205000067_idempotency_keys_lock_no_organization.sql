-- A stored response names its organization and user as the key that authenticated the
-- request did; nothing else writes the table. Its foreign key to `organizations` checked
-- again what authentication had just read, and took a KEY SHARE lock on the organization's
-- row for every command with an idempotency key: every command of an organization locked
-- the same row. An organization is never deleted while it has users (their own key), and
-- keys are pruned after their retention (`dhanman up`, DHANMAN_RETENTION_IDEMPOTENCY).
alter table idempotency_keys drop constraint idempotency_keys_organization_id_fkey;
