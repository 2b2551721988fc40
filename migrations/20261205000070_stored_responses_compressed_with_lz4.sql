-- A stored response is compressed when it is written: a batch's response (a thousand
-- results) is hundreds of kilobytes. lz4 compresses it several times faster than pglz,
-- Postgres's default. A server built without lz4 keeps pglz.
do $$
begin
    alter table idempotency_keys alter column response_body set compression lz4;
exception when feature_not_supported then
    raise notice 'lz4 is not built into this server: stored responses stay compressed with pglz';
end $$;
