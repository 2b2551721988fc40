-- Salaries posted for a pay period. One per employee and period in an organization: a
-- second posting for the same month is refused, not added.
create table salaries (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    employee_id uuid not null,
    employee_name text not null check (length(btrim(employee_name)) > 0),
    period text not null check (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    amount numeric(18, 2) not null check (amount > 0),
    currency char(3) not null,
    created_at timestamptz not null default now(),
    constraint salaries_employee_period unique (organization_id, employee_id, period)
);
