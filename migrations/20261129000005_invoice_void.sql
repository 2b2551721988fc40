-- Voiding an invoice. The status check already allows 'void'; the reason and the time are
-- kept on the invoice so that reads need not go through the events.
alter table invoices add column void_reason text;
alter table invoices add column voided_at timestamptz;
alter table invoices add constraint invoices_void_details check (
    (status = 'void') = (voided_at is not null) and (void_reason is null or status = 'void')
);
