-- Idempotency keys belong to the user who sent them: another user of the organization who
-- happens to send the same `Idempotency-Key` neither gets the first user's stored response
-- nor a conflict. Keys stored before this have no known user; they keep the nil UUID, which
-- no user has, and a command that reuses one of them is refused as a conflict (never
-- replayed to someone else, never executed twice).
alter table idempotency_keys
    add column user_id uuid not null default '00000000-0000-0000-0000-000000000000';
alter table idempotency_keys alter column user_id drop default;
alter table idempotency_keys drop constraint idempotency_keys_pkey;
alter table idempotency_keys add primary key (organization_id, user_id, idempotency_key);
