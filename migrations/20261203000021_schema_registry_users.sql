-- Who may change the embedded schema registry. Writes (register, delete, config, mode,
-- import) need HTTP basic auth as one of these users, which is what Confluent clients send
-- (`basic.auth.user.info=name:secret`); reads stay open. Created by
-- `dhanman registry users add NAME`, which prints the secret once; only its SHA-256 is kept.
create table schema_registry_users (
    name text primary key check (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    secret_hash bytea not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
