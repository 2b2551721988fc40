-- Embedded schema registry (crate dhanman-registry): modes, and the fingerprints that
-- `?normalize=true` and default-aware deduplication need.

-- subject '' holds the global mode; no row means the built-in default (READWRITE).
CREATE TABLE schema_registry_mode (
    subject text PRIMARY KEY,
    mode    text NOT NULL CHECK (mode IN ('READWRITE', 'READONLY', 'IMPORT'))
);

-- `fingerprint` was the sha256 of the Avro parsing canonical form, which ignores defaults,
-- aliases and logical types; it is now the sha256 of the registry's identity form, which keeps
-- them (crate dhanman-registry, avro.rs). Postgres cannot compute either form, so rows stored
-- before this migration are rewritten by the registry itself on its first registration or
-- lookup; a NULL normalized_fingerprint marks a row not rewritten yet.
ALTER TABLE schema_registry_schemas ADD COLUMN normalized_fingerprint bytea;

COMMENT ON COLUMN schema_registry_schemas.fingerprint IS
    'sha256 of the identity form (full names, every attribute, no whitespace); unique';
COMMENT ON COLUMN schema_registry_schemas.normalized_fingerprint IS
    'sha256 of the normalized form (identity form without docs); shared by schemas differing only in docs';
COMMENT ON COLUMN schema_registry_schemas.canonical IS
    'Avro parsing canonical form, kept for reference; no longer the deduplication key';

-- `?normalize=true` matches a subject's versions on it.
CREATE INDEX schema_registry_schemas_normalized_fingerprint
    ON schema_registry_schemas (normalized_fingerprint);
