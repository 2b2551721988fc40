-- A dead letter (or its redrive) is published as its record was read: its key and header
-- values byte for byte. `message_key` is text; a key whose bytes that text cannot give back
-- (not UTF-8, or holding NUL) is kept here as well, and the relay publishes these bytes.
-- (Header values that are not such text are kept in `headers` as `{"base64": "..."}`.)
alter table outbox add column raw_key bytea;
alter table outbox add constraint outbox_raw_key_of_raw_rows
    check (raw_key is null or raw_value is not null);
