-- A payment's Idempotency-Key belongs to the user who sent it, as every other command's
-- (20261203000041): another user of the organization sending the same key neither gets the
-- first user's payment nor a conflict. Sagas recorded before this keep the nil UUID, which no
-- user has; a payment that reuses such a key is refused as a conflict (never replayed to
-- someone else, never charged twice).
alter table payment_sagas
    add column user_id uuid not null default '00000000-0000-0000-0000-000000000000';
alter table payment_sagas alter column user_id drop default;
alter table payment_sagas drop constraint payment_sagas_organization_id_idempotency_key_key;
alter table payment_sagas
    add constraint payment_sagas_idempotency_key unique (organization_id, user_id, idempotency_key);
