-- The ledger writes a batch of entries in one statement per table; its integrity checks now
-- run once per statement instead of once per row, with the same guarantees.

-- Entries name known organizations: checked per statement (one lookup and one KEY SHARE
-- lock per organization the statement names, as the foreign key took per row), and an
-- organization with entries cannot be deleted (the foreign key's NO ACTION).
alter table journal_entries drop constraint journal_entries_organization_id_fkey;

create function journal_entries_known_organizations() returns trigger language plpgsql as $$
declare
    missing uuid;
begin
    perform 1
       from organizations o
      where o.id in (select organization_id from new_rows)
        for key share;
    select n.organization_id into missing
      from (select distinct organization_id from new_rows) n
     where not exists (select 1 from organizations o where o.id = n.organization_id)
     limit 1;
    if found then
        raise exception 'journal entry names unknown organization %', missing
            using errcode = 'foreign_key_violation';
    end if;
    return null;
end $$;
create trigger journal_entries_known_organizations after insert on journal_entries
    referencing new table as new_rows
    for each statement execute function journal_entries_known_organizations();

create function organizations_keep_books() returns trigger language plpgsql as $$
begin
    if exists (select 1 from journal_entries where organization_id = old.id) then
        raise exception 'organization % has journal entries and cannot be deleted', old.id
            using errcode = 'foreign_key_violation';
    end if;
    return old;
end $$;
create trigger organizations_keep_books before delete on organizations
    for each row execute function organizations_keep_books();

-- Double entry, checked on the lines a statement inserts: per entry they balance, number
-- at least two, and the entry exists. Every earlier statement passed the same check, so
-- each entry's lines as a whole balance too; the postings already written need not be read.
create or replace function postings_balanced() returns trigger language plpgsql as $$
declare
    bad record;
begin
    select r.account_code into bad
      from (select distinct account_code from new_rows) r
     where not exists (select 1 from accounts a where a.code = r.account_code)
     limit 1;
    if found then
        raise exception 'posting names unknown account %', bad.account_code
            using errcode = 'foreign_key_violation';
    end if;
    -- One index lookup per touched entry (LATERAL), never a scan of all entries.
    select n.entry_id, n.debits, n.credits, n.lines, e.entries
      into bad
      from (select entry_id, sum(debit) as debits, sum(credit) as credits, count(*) as lines
              from new_rows
             group by entry_id) n
      cross join lateral (
            select count(*) as entries from journal_entries j where j.id = n.entry_id) e
     where n.debits <> n.credits or n.lines < 2 or e.entries = 0
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

-- Postings are read by entry: one index on (entry, line id) serves that and identifies a
-- posting, where a key on the line id and a second index on the entry cost two insertions
-- per line.
alter table postings drop constraint postings_pkey;
drop index postings_entry;
alter table postings add primary key (entry_id, id);
