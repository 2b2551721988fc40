-- API keys get an id (what `GET /v1/keys` shows and `/v1/keys/{id}/revoke|rotate` name;
-- the secret itself is never stored, only its SHA-256), a revocation time (a revoked key
-- authenticates nothing, at once), the time it was last used (kept to the minute) and the
-- key a rotation replaced.
alter table api_keys
    add column id uuid not null default gen_random_uuid(),
    add column revoked_at timestamptz,
    add column last_used_at timestamptz,
    add column rotated_from uuid;
alter table api_keys add constraint api_keys_id unique (id);
create index api_keys_org_user on api_keys (organization_id, user_id);

-- A user created through the API gets no key: the administrator who creates them gets an
-- invitation instead, and the invited person exchanges its one-time token for their first
-- key (`POST /v1/invitations/accept`). Only the token's SHA-256 is kept here.
create table invitations (
    id uuid primary key,
    organization_id uuid not null references organizations (id),
    user_id uuid not null references users (id),
    -- The administrator who created the user (none for a job).
    created_by uuid references users (id),
    token_hash bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    accepted_at timestamptz,
    -- The key the acceptance issued.
    key_id uuid references api_keys (id),
    check (expires_at > created_at),
    check ((accepted_at is null) = (key_id is null))
);
create index invitations_user on invitations (user_id);

-- The raw token on its way to the invited person's mailbox, and nowhere else: written with
-- the user (never into the `UserCreated` event, so never onto Kafka), read by the notifier
-- when it renders the welcome email of that event, and deleted by the trigger below in the
-- transaction that records the email as sent (or dead-lettered). Rows of invitations that
-- expired unsent are purged when the next invitation is created.
create table invitation_emails (
    -- The `UserCreated` event whose welcome email carries the token.
    event_id uuid primary key,
    invitation_id uuid not null references invitations (id),
    token text not null,
    expires_at timestamptz not null
);

-- When the welcome email of an invitation is recorded as sent (or is dead-lettered or
-- skipped, and so will never be sent), the token leaves the database: its row is deleted
-- and the copy in the delivery log's rendered bodies is blanked out.
create function invitation_email_settled() returns trigger
language plpgsql as $$
declare
    secret text;
begin
    if new.template = 'welcome'
       and new.status in ('sent', 'dead_lettered', 'skipped')
       and (tg_op = 'INSERT' or old.status is distinct from new.status) then
        delete from invitation_emails where event_id = new.event_id
        returning token into secret;
        if secret is not null then
            new.body_text := replace(new.body_text, secret, '[removed once sent]');
            new.body_html := replace(new.body_html, secret, '[removed once sent]');
        end if;
    end if;
    return new;
end
$$;

create trigger notification_deliveries_invitation_settled
    before insert or update of status on notification_deliveries
    for each row execute function invitation_email_settled();
