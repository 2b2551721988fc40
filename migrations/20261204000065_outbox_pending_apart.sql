-- What waits to be published is kept apart from the rows: `outbox_pending` holds the ids of
-- the rows the relay has yet to publish, and the relay deletes an id once the broker has
-- acknowledged its record. The outbox's rows are no longer rewritten when published (a
-- `published_at` set on a row wrote the whole row again, payload and headers, and could not
-- be a HOT update since the pending index's predicate named the column): the outbox grows
-- by its rows only, and the relay's read walks a narrow index of ids.
--
-- Every row written to the outbox is queued by the trigger below, whatever writes it: a
-- writer cannot forget it. A parked row is out of the queue until it is unparked.
drop index outbox_pending;
create table outbox_pending (id bigint primary key);

insert into outbox_pending (id)
select id from outbox where published_at is null and parked_at is null;

create function outbox_queue() returns trigger language plpgsql as $$
begin
    insert into outbox_pending (id) select id from queued where parked_at is null;
    return null;
end
$$;

create trigger outbox_queue after insert on outbox
    referencing new table as queued
    for each statement execute function outbox_queue();

drop index outbox_parked;
create index outbox_parked on outbox (id) where parked_at is not null;

-- Rows announced before the ledger stored its records (and published then) may lack a
-- payload; every row written since carries one.
alter table outbox drop constraint outbox_has_value;
alter table outbox add constraint outbox_has_value check (
    (record_name is not null and schema_version is not null and raw_value is null
        and (payload is not null or derived_from is not null))
    or (raw_value is not null and payload is null and derived_from is null)
);

alter table outbox drop column published_at;
