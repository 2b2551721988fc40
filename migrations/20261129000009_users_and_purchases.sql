-- People of an organization, each with one role; every API key belongs to one of them, so
-- that a command knows who asked (the requester of a purchase order, its approvers).
create table users (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    email text not null check (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    name text not null check (length(btrim(name)) > 0),
    role text not null check (role in ('admin', 'accountant', 'approver', 'manager', 'cfo')),
    created_at timestamptz not null default now()
);
create unique index users_org_email on users (organization_id, lower(email));

-- Keys made before users existed each get a user of their own.
alter table api_keys add column user_id uuid;
update api_keys set user_id = gen_random_uuid();
insert into users (id, organization_id, email, name, role)
select user_id, organization_id, 'key-' || left(encode(key_hash, 'hex'), 12) || '@users.invalid',
       'API key user', role
  from api_keys;
alter table api_keys alter column user_id set not null,
    add constraint api_keys_user foreign key (user_id) references users (id);

-- The users projection, fed by `UserCreated` on dhanman.common.users: what every context
-- reads to find people (approvers' addresses, a requester's name) without reaching into the
-- command side's tables.
create table user_directory (
    user_id uuid primary key,
    organization_id uuid not null,
    email text not null,
    name text not null,
    role text not null,
    source_event_id uuid not null,
    updated_at timestamptz not null default now()
);
create index user_directory_org_role on user_directory (organization_id, role);

-- Purchase orders and their approvals. The approvals an order needs are fixed when it is
-- submitted (`required_approvals`, in order); each is given once, by a key of that role
-- that is not the requester's.
create table purchase_orders (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    vendor_id uuid not null,
    vendor_name text not null,
    requester_id uuid not null references users (id),
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    items jsonb not null,
    required_approvals text[] not null check (cardinality(required_approvals) > 0),
    status text not null default 'pending' check (status in ('pending', 'approved', 'rejected')),
    -- Sum of the bills raised against the order; never above its amount.
    billed numeric(18, 2) not null default 0 check (billed >= 0 and billed <= amount),
    created_at timestamptz not null default now(),
    decided_at timestamptz
);
create index purchase_orders_org on purchase_orders (organization_id);

create table po_decisions (
    po_id uuid not null references purchase_orders (id),
    -- The approval this decision gives ('manager', 'cfo'), or the step it refused.
    step text not null,
    decision text not null check (decision in ('approved', 'rejected')),
    user_id uuid not null references users (id),
    role text not null,
    comment text,
    decided_at timestamptz not null default now(),
    primary key (po_id, step)
);

create table bills (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    vendor_id uuid not null,
    po_id uuid references purchase_orders (id),
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    description text not null,
    due_date date not null,
    created_at timestamptz not null default now()
);
create index bills_po on bills (po_id) where po_id is not null;
