-- Tenancy: every row and every API key belongs to one housing society.
create table organizations (
    id uuid primary key,
    name text not null check (length(btrim(name)) > 0),
    created_at timestamptz not null default now()
);

-- Only the SHA-256 of a key is stored; the key itself is shown once, at creation.
create table api_keys (
    key_hash bytea primary key,
    organization_id uuid not null references organizations (id),
    role text not null check (role in ('admin', 'accountant', 'approver', 'manager', 'cfo')),
    created_at timestamptz not null default now()
);

create table customers (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    name text not null,
    email text,
    unit text,
    active boolean not null default true,
    created_at timestamptz not null default now()
);
create index customers_org on customers (organization_id);

create table invoices (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    customer_id uuid not null references customers (id),
    invoice_number text not null,
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    issue_date date not null,
    due_date date not null check (due_date >= issue_date),
    description text,
    period text,
    status text not null default 'open' check (status in ('open', 'paid', 'void')),
    created_at timestamptz not null default now(),
    unique (organization_id, invoice_number)
);
create index invoices_customer on invoices (customer_id);

create table payments (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    customer_id uuid not null references customers (id),
    invoice_id uuid references invoices (id),
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    method text not null,
    reference text,
    created_at timestamptz not null default now()
);

-- A retried command returns the first response; the request hash tells a retry from a
-- different request that reuses the key.
create table idempotency_keys (
    organization_id uuid not null references organizations (id),
    idempotency_key text not null,
    request_hash bytea not null,
    response_status integer not null,
    response_body jsonb not null,
    created_at timestamptz not null default now(),
    primary key (organization_id, idempotency_key)
);

-- Events and commands waiting for the relay. `payload` is the record's JSON form, encoded
-- to Avro at publish time with (record_name, schema_version); `raw_value` is a record
-- forwarded byte for byte (dead letters).
create table outbox (
    id bigserial primary key,
    event_id uuid not null unique,
    topic text not null,
    message_key text,
    record_name text,
    schema_version integer,
    payload jsonb,
    raw_value bytea,
    headers jsonb not null default '{}',
    created_at timestamptz not null default now(),
    published_at timestamptz,
    check ((payload is not null and record_name is not null and schema_version is not null)
           or raw_value is not null)
);
create index outbox_pending on outbox (id) where published_at is null;

create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('dhanman_outbox', '');
    return null;
end $$;
create trigger outbox_notify after insert on outbox
    for each statement execute function outbox_notify();

-- Where each processor's consumer group is, authoritative over Kafka's committed offsets.
create table consumer_offsets (
    group_id text not null,
    topic text not null,
    partition integer not null,
    next_offset bigint not null check (next_offset >= 0),
    updated_at timestamptz not null default now(),
    primary key (group_id, topic, partition)
);

-- Every event a processor has applied: the idempotency gate and the consistency token's
-- answer.
create table processed_events (
    processor text not null,
    event_id uuid not null,
    topic text not null,
    partition integer not null,
    "offset" bigint not null,
    processed_at timestamptz not null default now(),
    primary key (processor, event_id)
);

-- Chart of accounts.
create table accounts (
    code text primary key,
    name text not null,
    type text not null check (type in ('asset', 'liability', 'equity', 'revenue', 'expense'))
);
insert into accounts (code, name, type) values
    ('1000', 'Bank', 'asset'),
    ('1200', 'Accounts Receivable', 'asset'),
    ('2000', 'Accounts Payable', 'liability'),
    ('2100', 'Reserved Budget', 'liability'),
    ('2200', 'Salaries Payable', 'liability'),
    ('4000', 'Maintenance Revenue', 'revenue'),
    ('5000', 'Expenses', 'expense'),
    ('5100', 'Salary Expense', 'expense'),
    ('5900', 'Budget Commitments', 'expense');

-- One entry per source event, under the event's own id: the primary key is the
-- idempotency guarantee, and time-ordered event ids keep its inserts at the right edge.
create table journal_entries (
    id uuid primary key check (id = source_event_id),
    organization_id uuid not null references organizations (id),
    source_event_id uuid not null,
    reference_type text not null,
    reference_id uuid not null,
    description text not null,
    currency char(3) not null,
    occurred_at timestamptz not null,
    correlation_id text,
    posted_at timestamptz not null default now()
);
create index journal_entries_reference on journal_entries (organization_id, reference_id);

create table postings (
    id bigserial primary key,
    -- Entry and account are checked by the statement trigger below, once per entry rather
    -- than by two foreign-key lookups per line (which halve the posting rate).
    entry_id uuid not null,
    -- Copied from the entry (which references organizations) for per-organization reads.
    organization_id uuid not null,
    account_code text not null,
    party_type text,
    party_id uuid,
    debit numeric(18, 2) not null default 0 check (debit >= 0),
    credit numeric(18, 2) not null default 0 check (credit >= 0),
    check ((debit = 0) <> (credit = 0)),
    check ((party_type is null) = (party_id is null))
);
create index postings_entry on postings (entry_id);
-- No index by party yet: balances per party are materialized in party_balances.

-- Double entry, enforced by the database: after every statement that inserts postings,
-- each entry it touched exists, has at least two lines, and its debits equal its credits;
-- every line names a known account. The postings of an entry are therefore written in one
-- statement.
create function postings_balanced() returns trigger language plpgsql as $$
declare
    bad record;
begin
    select r.account_code into bad
      from new_rows r
     where not exists (select 1 from accounts a where a.code = r.account_code)
     limit 1;
    if found then
        raise exception 'posting names unknown account %', bad.account_code
            using errcode = 'foreign_key_violation';
    end if;
    -- One index lookup per touched entry (LATERAL), never a scan of all postings.
    select n.entry_id, s.debits, s.credits, s.lines, e.entries
      into bad
      from (select distinct entry_id from new_rows) n
      cross join lateral (
            select sum(p.debit) as debits, sum(p.credit) as credits, count(*) as lines
              from postings p
             where p.entry_id = n.entry_id) s
      cross join lateral (
            select count(*) as entries from journal_entries j where j.id = n.entry_id) e
     where s.debits <> s.credits or s.lines < 2 or e.entries = 0
     limit 1;
    if found and bad.entries = 0 then
        raise exception 'postings reference unknown journal entry %', bad.entry_id
            using errcode = 'foreign_key_violation';
    elsif found then
        raise exception 'journal entry % is unbalanced: debits %, credits %, lines %',
            bad.entry_id, bad.debits, bad.credits, bad.lines
            using errcode = 'check_violation';
    end if;
    return null;
end $$;
create trigger postings_balanced after insert on postings
    referencing new table as new_rows
    for each statement execute function postings_balanced();

-- Postings and entries are immutable: corrections are reversing entries.
create function forbid_change() returns trigger language plpgsql as $$
begin
    raise exception '% is append-only: % refused (post a reversing entry instead)',
        tg_table_name, tg_op using errcode = 'restrict_violation';
end $$;
create trigger postings_immutable before update or delete on postings
    for each row execute function forbid_change();
create trigger postings_no_truncate before truncate on postings
    for each statement execute function forbid_change();
create trigger journal_entries_immutable before update or delete on journal_entries
    for each row execute function forbid_change();
create trigger journal_entries_no_truncate before truncate on journal_entries
    for each statement execute function forbid_change();
-- Postings name accounts by code: a code, once in the chart, stays.
create trigger accounts_keep_codes before delete or truncate on accounts
    for each statement execute function forbid_change();

-- Balances materialized by the ledger processor in the same transaction as the postings.
create table account_balances (
    organization_id uuid not null,
    account_code text not null references accounts (code),
    currency char(3) not null,
    debit_total numeric(20, 2) not null default 0,
    credit_total numeric(20, 2) not null default 0,
    updated_at timestamptz not null default now(),
    primary key (organization_id, account_code, currency)
);

create table party_balances (
    organization_id uuid not null,
    account_code text not null references accounts (code),
    party_type text not null,
    party_id uuid not null,
    currency char(3) not null,
    debit_total numeric(20, 2) not null default 0,
    credit_total numeric(20, 2) not null default 0,
    updated_at timestamptz not null default now(),
    primary key (organization_id, account_code, party_type, party_id, currency)
);
