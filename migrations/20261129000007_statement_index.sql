-- A customer's statement reads their receivable lines straight from postings; without
-- this it scans every posting of the organization. Partial: most lines name no party.
create index postings_party on postings (party_id, entry_id) where party_id is not null;
