-- Notifications. The delivery log decides what is sent: one row per (event, recipient,
-- template), written by the `notifier` processor in its batch's transaction (a replay
-- finds the row and adds nothing), then claimed and sent over SMTP by the sender loop,
-- outside any batch transaction.
create table notification_deliveries (
    event_id uuid not null,
    -- An email address, or `<party>:<id>` when the party has none (status `skipped`).
    recipient text not null,
    template text not null,
    organization_id uuid not null,
    correlation_id text not null,
    -- The record type and topic that asked for it, for the dead letter's headers.
    event_type text not null,
    source_topic text not null,
    -- Deterministic from (event, recipient, template): receivers can deduplicate the one
    -- resend a crash after the server's acceptance can cause.
    message_id text not null,
    subject text not null default '',
    body_text text not null default '',
    body_html text not null default '',
    status text not null default 'pending'
        check (status in ('pending', 'sending', 'sent', 'skipped', 'dead_lettered')),
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    -- While `sending`: after this a crashed sender's claim is taken over.
    lease_until timestamptz,
    last_error text,
    -- Why a row is `skipped` or `dead_lettered`.
    reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    sent_at timestamptz,
    primary key (event_id, recipient, template)
);
create index notification_deliveries_due on notification_deliveries (next_attempt_at)
    where status in ('pending', 'sending');
create index notification_deliveries_org on notification_deliveries (organization_id, created_at);

-- Where a payslip goes: optional, given with the salary.
alter table salaries add column employee_email text
    check (employee_email is null or employee_email ~ '^[^@[:space:]]+@[^@[:space:]]+$');
