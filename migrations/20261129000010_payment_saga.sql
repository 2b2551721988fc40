-- The payment saga: one row per payment taken through the gateway (its id is the payment's
-- id), moved through its states by the API and by recovery, and an append-only log of
-- each step it took.
--
--   started -> charging -> completed            (charged and recorded in one transaction)
--                      \-> failed               (declined: PaymentFailed, no ledger change)
--                      \-> charged -> compensated (charged, but the invoice could not be
--                                                  paid any more: refunded)
create table payment_sagas (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    invoice_id uuid not null references invoices (id),
    customer_id uuid not null references customers (id),
    idempotency_key text not null,
    request_hash bytea not null,
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    method text not null check (method in ('upi', 'card', 'netbanking')),
    reference text not null,
    correlation_id text not null default '',
    state text not null default 'started'
        check (state in ('started', 'charging', 'charged', 'completed', 'failed', 'compensated')),
    charge_id text,
    refund_id text,
    failure_reason text,
    -- The PaymentReceived (completed) or PaymentFailed (failed) event id.
    consistency_token uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (organization_id, idempotency_key)
);

-- One live or completed saga per invoice: a second payment of an invoice being paid, or
-- paid, is refused (409). A failed or compensated saga frees the invoice again.
create unique index payment_sagas_one_per_invoice on payment_sagas (invoice_id)
    where state in ('started', 'charging', 'charged', 'completed');

-- What recovery scans.
create index payment_sagas_unfinished on payment_sagas (updated_at)
    where state in ('started', 'charging', 'charged');

create table payment_saga_steps (
    id bigserial primary key,
    saga_id uuid not null references payment_sagas (id),
    state text not null,
    detail jsonb not null default '{}',
    at timestamptz not null default now()
);
create index payment_saga_steps_saga on payment_saga_steps (saga_id, id);
