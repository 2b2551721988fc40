-- The digest of a claimed message's type and body: a message reusing a claimed id with
-- another body is a publisher's mistake to dead-letter, not a redelivery to drop. Null for
-- the messages claimed before it (their redeliveries are taken as such).
alter table rabbitmq_inbound add column body_sha256 bytea;
