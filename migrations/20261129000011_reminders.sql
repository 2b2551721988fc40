-- Payment reminders: one durable timer per invoice, keyed by the invoice id so that it can
-- be created once only. A row exists in one of these states:
--
--   scheduled          -> fired               (SendPaymentReminder written to the outbox)
--                      -> cancelled           (paid in full or voided, by event or found so
--                                              on the command side at firing time)
--                      -> skipped_no_address  (due, but the customer has no email)
--   cancelled (tombstone, no fire_at)          a payment or void consumed before the
--                                              invoice: the later InvoiceCreated finds the
--                                              row and schedules nothing
--
-- Only 'scheduled' ever changes; a replay of the invoice topic inserts with
-- `on conflict do nothing`, so a fired or cancelled timer is never re-created.
create table payment_reminders (
    invoice_id uuid primary key,
    organization_id uuid not null,
    customer_id uuid,
    state text not null
        check (state in ('scheduled', 'fired', 'cancelled', 'skipped_no_address')),
    fire_at timestamptz,
    amount numeric(18, 2),
    currency char(3),
    due_date date,
    correlation_id text not null default '',
    -- The InvoiceCreated that scheduled the timer (null for a tombstone).
    created_by_event_id uuid,
    -- The PaymentReceived or InvoiceVoided that cancelled it (null when the firing
    -- transaction cancelled it after finding the invoice settled on the command side).
    cancelled_by_event_id uuid,
    cancel_reason text,
    -- The SendPaymentReminder written to the outbox when it fired.
    fired_command_id uuid,
    -- The scheduler instance (reminder_schedulers) that fired, cancelled or skipped it.
    fired_by uuid,
    attempts integer not null default 0,
    last_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- A timer that can fire knows everything the reminder says.
    check (state <> 'scheduled' or (fire_at is not null and customer_id is not null
        and amount is not null and currency is not null and due_date is not null)),
    check ((state = 'fired') = (fired_command_id is not null))
);
create index payment_reminders_due on payment_reminders (fire_at) where state = 'scheduled';
create index payment_reminders_org on payment_reminders (organization_id);

-- Payments seen on the payments topic per invoice, for invoices the command side of this
-- database does not know (events from another service): whether they settle the invoice
-- is decided against the invoice's amount once it is known. Keyed by payment, so a replay
-- counts nothing twice.
create table payment_reminder_payments (
    invoice_id uuid not null,
    payment_id uuid not null,
    event_id uuid not null,
    amount numeric(18, 2) not null,
    primary key (invoice_id, payment_id)
);

-- One row per running scheduler: when its last complete tick started. Tests and operators
-- use it to know that every timer due at some time has been looked at.
create table reminder_schedulers (
    instance_id uuid primary key,
    started_at timestamptz not null default now(),
    last_tick_started_at timestamptz,
    ticks bigint not null default 0
);
