-- The relay polls the outbox instead of being woken by a NOTIFY from every transaction that
-- writes to it: a transaction that notifies holds a cluster-wide lock from its commit's
-- start to its end (WAL flush included), so every command's commit waited for the one
-- before it. Without it, commands commit together (group commit); the relay looks every
-- few milliseconds while idle (an index scan of the pending rows, empty when idle).
drop trigger outbox_notify on outbox;
drop function outbox_notify();
