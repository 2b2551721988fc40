-- What each member holds (`topic:partition`), written with its heartbeat, so that the
-- members can see together whether every partition of their topics has a live owner: a
-- coordinator that loses an assignment leaves partitions nobody reads. Null: a member that
-- does not say.
alter table consumer_members add column partitions text[];
