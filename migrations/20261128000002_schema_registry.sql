-- Embedded schema registry (crate dhanman-registry), Confluent Schema Registry semantics.
-- Self-contained: depends on no other migration.

-- One row per distinct schema (by Avro parsing canonical form). The id is the global id
-- written into every Confluent-framed Kafka message, so rows are never deleted: a consumer
-- must still be able to decode old messages after their subject was deleted.
CREATE TABLE schema_registry_schemas (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_type text        NOT NULL DEFAULT 'AVRO',
    -- sha256 of canonical_form; the dedup key for registrations from any subject
    fingerprint bytea       NOT NULL UNIQUE,
    canonical   text        NOT NULL,
    -- the text as first registered, which is what clients get back
    schema      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schema_registry_subject_versions (
    subject    text        NOT NULL,
    version    integer     NOT NULL CHECK (version > 0),
    schema_id  integer     NOT NULL REFERENCES schema_registry_schemas (id),
    -- soft delete: hidden from reads unless ?deleted=true, removed only by permanent=true
    deleted    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);

-- Backstop for the per-subject advisory lock: a schema is live at most once per subject.
CREATE UNIQUE INDEX schema_registry_subject_versions_live_schema
    ON schema_registry_subject_versions (subject, schema_id)
    WHERE NOT deleted;

CREATE INDEX schema_registry_subject_versions_schema_id
    ON schema_registry_subject_versions (schema_id);

-- subject '' holds the global level; no row means the built-in default (BACKWARD).
CREATE TABLE schema_registry_config (
    subject       text PRIMARY KEY,
    compatibility text NOT NULL CHECK (compatibility IN (
        'NONE', 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE',
        'FULL', 'FULL_TRANSITIVE'
    ))
);
