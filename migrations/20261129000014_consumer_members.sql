-- Members of the processors' consumer groups, each beating every few seconds while it
-- runs: the offsets tool refuses to move a group that has a live member (one seen within
-- the session timeout), whatever the broker says about its groups.
create table consumer_members (
    group_id text not null,
    member_id uuid not null,
    host text not null,
    pid integer not null,
    started_at timestamptz not null default now(),
    last_seen timestamptz not null default now(),
    primary key (group_id, member_id)
);
