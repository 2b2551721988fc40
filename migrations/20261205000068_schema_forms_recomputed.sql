-- The registry's identity and normalized forms changed (crate dhanman-registry, avro.rs): a
-- list of `fields` on an enum or a fixed, and aliases that are not all names, are now copied
-- as written. A row stored before holds the fingerprints of the old forms, so registering its
-- exact text again would not find it. A NULL normalized_fingerprint marks a row whose
-- fingerprints the registry recomputes on its first registration or lookup
-- (20261129000003_schema_registry_mode.sql); the new forms tell apart every pair of schemas
-- the old ones did, so the recomputed fingerprints stay unique.
UPDATE schema_registry_schemas SET normalized_fingerprint = NULL;
