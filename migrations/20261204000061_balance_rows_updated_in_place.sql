-- Balance and offset rows are updated by every batch and never by their keys: with room left
-- on each page, Postgres updates them in place (heap-only tuples), without a new index
-- entry per update and without the index bloat that follows. Pages written from now on
-- keep the room; existing pages gain it as they are rewritten (VACUUM FULL, CLUSTER).
alter table account_balances set (fillfactor = 70);
alter table party_balances set (fillfactor = 70);
alter table consumer_offsets set (fillfactor = 50);
