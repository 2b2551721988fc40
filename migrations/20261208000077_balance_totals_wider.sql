-- A posting's amount goes up to 9,999,999,999,999,999.99 (numeric(18, 2)), but the
-- balances' totals stopped at 10^18: about a hundred of the largest invoices for one
-- organization overflowed its receivable's total, the ledger refused the batch and
-- dead-lettered the postings, and the invoices stood without their entries. At 10^26 the
-- totals take ten thousand million of the largest postings (and stay within what
-- rust_decimal reads exactly, 7.9 x 10^26 at two places). Widening a numeric's precision
-- at the same scale rewrites nothing.
alter table account_balances
    alter column debit_total type numeric(28, 2),
    alter column credit_total type numeric(28, 2);
alter table party_balances
    alter column debit_total type numeric(28, 2),
    alter column credit_total type numeric(28, 2);
