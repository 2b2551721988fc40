-- An invoice's payments are read by the invoice: a payment command sums them under the
-- invoice's lock to know whether it is now paid, `GET /v1/invoices/{id}` shows the sum, and
-- the reminders processor and scheduler judge whether an invoice is settled by it. Without
-- an index each of those read the whole table, a cost that grew with every payment ever
-- taken. Payments on account (no invoice) are left out.
create index payments_invoice on payments (invoice_id) where invoice_id is not null;
