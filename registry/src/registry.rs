//! The registry's storage in Postgres: subjects, their versions and the schemas they point
//! at (one global id per distinct schema), registration under the subject's lock, lookups,
//! and soft and permanent deletes. Compatibility levels and modes, and the checks that
//! use them, are in `settings`.

mod settings;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use crate::avro::ParsedSchema;
use crate::compatibility::{CompatibilityLevel, incompatibilities};
use crate::error::{Error, Result};

pub use settings::Mode;
use settings::{effective_level, effective_mode, forget_subject_settings, refuse_if_read_only};

/// Key of the global rows in `schema_registry_config` and `schema_registry_mode`.
const GLOBAL: &str = "";

/// Handle on the Postgres-backed registry; cheap to clone (it is a pool).
#[derive(Debug, Clone)]
pub struct Registry {
    pool: PgPool,
    /// Set once this process has rewritten the fingerprints of schemas stored before the
    /// identity form existed (see [`Registry::upgrade_fingerprints`]).
    fingerprints_upgraded: Arc<AtomicBool>,
}

/// One version of a subject, as `GET /subjects/{subject}/versions/{version}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// A version path segment: a number or "latest".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    Latest,
    Number(i32),
}

impl VersionSelector {
    /// Confluent accepts `latest`, `-1` (also latest) and 1..=i32::MAX.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        match raw.parse::<i32>() {
            Ok(-1) => Ok(Self::Latest),
            Ok(n) if n >= 1 => Ok(Self::Number(n)),
            _ => Err(Error::InvalidVersion(raw.to_owned())),
        }
    }
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// How `POST /subjects/{subject}/versions` registers a schema beyond its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Register the normalized form and match the subject's versions on it
    /// (see [`ParsedSchema`]).
    pub normalize: bool,
    /// IMPORT mode only: the global id to store the schema under.
    pub id: Option<i32>,
    /// IMPORT mode only: the version to store the schema under.
    pub version: Option<i32>,
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct VersionRow {
    version: i32,
    deleted: bool,
}

async fn advisory_lock(tx: &mut Transaction<'static, Postgres>, key: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('schema_registry:' || $1, 0))")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Serializes every write to one subject for the rest of the transaction, so two concurrent
/// registrations of a new schema cannot both decide it is missing and each add a version.
/// Also holds the registry-wide lock shared, so that a global mode change waits for writes in
/// flight and no write starts while it checks that the registry is empty.
async fn lock_subject(tx: &mut Transaction<'static, Postgres>, subject: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('schema_registry:' || $1, 0))",
    )
    .bind(GLOBAL)
    .execute(&mut **tx)
    .await?;
    advisory_lock(tx, subject).await
}

/// The schema table is shared by all subjects, whose locks don't exclude each other. Taking
/// this lock (always after the subject's, so they cannot deadlock) makes "is this schema or id
/// stored yet" reliable, so racing subjects don't each draw a sequence value and ids stay dense;
/// only new versions get here, so serializing them costs nothing.
async fn lock_schemas(tx: &mut Transaction<'static, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('schema_registry:schemas', 0))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn version_rows(
    tx: &mut Transaction<'static, Postgres>,
    subject: &str,
) -> Result<Vec<VersionRow>> {
    Ok(sqlx::query_as(
        "SELECT version, deleted FROM schema_registry_subject_versions
         WHERE subject = $1 ORDER BY version",
    )
    .bind(subject)
    .fetch_all(&mut **tx)
    .await?)
}

/// The schema texts of a subject's live versions, oldest first.
async fn live_schemas(executor: impl PgExecutor<'_>, subject: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT s.schema
         FROM schema_registry_subject_versions v
         JOIN schema_registry_schemas s ON s.id = v.schema_id
         WHERE v.subject = $1 AND NOT v.deleted
         ORDER BY v.version",
    )
    .bind(subject)
    .fetch_all(executor)
    .await?)
}

impl Registry {
    /// The pool the registry stores in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            fingerprints_upgraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Register (or find) an AVRO schema under a subject; returns (global id, version).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<(i32, i32)> {
        let parsed = ParsedSchema::parse(schema)?;
        self.register_schema(subject, &parsed, RegisterOptions::default())
            .await
    }

    /// `POST /subjects/{subject}/versions`; returns (global id, version).
    ///
    /// A schema already live in the subject is returned as it is, whatever the mode (as
    /// Confluent). Otherwise READONLY refuses, an explicit id or version needs IMPORT, and
    /// IMPORT needs one; outside IMPORT the subject's compatibility level must accept it.
    pub async fn register_schema(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        options: RegisterOptions,
    ) -> Result<(i32, i32)> {
        self.upgrade_fingerprints().await?;
        let normalized;
        let schema = if options.normalize {
            normalized = schema.clone().into_normalized()?;
            &normalized
        } else {
            schema
        };

        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;

        let existing: Option<(i32, i32)> = sqlx::query_as(
            "SELECT s.id, v.version
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND NOT v.deleted
               AND CASE WHEN $3 THEN s.normalized_fingerprint = $4 ELSE s.fingerprint = $2 END
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .bind(options.normalize)
        .bind(&schema.normalized_fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, version)) = existing
            && options.id.is_none_or(|requested| requested == id)
        {
            return Ok((id, version));
        }

        let mode = effective_mode(&mut tx, subject).await?;
        let explicit = options.id.is_some() || options.version.is_some();
        let refusal = match mode {
            Mode::ReadOnly => Some("is in read-only mode"),
            Mode::ReadWrite if explicit => Some("is not in import mode"),
            Mode::Import if !explicit => Some("is not in read-write mode"),
            Mode::ReadWrite | Mode::Import => None,
        };
        if let Some(refusal) = refusal {
            return Err(Error::OperationNotPermitted(format!(
                "Subject {subject} {refusal}"
            )));
        }

        let rows = version_rows(&mut tx, subject).await?;
        if mode != Mode::Import {
            let level = effective_level(&mut tx, subject).await?;
            let previous = live_schemas(&mut *tx, subject).await?;
            let reasons = judged(level, schema, previous).await?;
            if !reasons.is_empty() {
                return Err(Error::IncompatibleSchema {
                    subject: subject.to_owned(),
                    reasons,
                });
            }
        }

        // Soft-deleted versions still count, so a version number is never reused while its row
        // exists (Confluent does the same). A requested version that is taken can't hold this
        // schema (that was answered above), and Confluent's silent overwrite would change what
        // an existing version means, so it is refused.
        let version = match options.version {
            Some(requested) if rows.iter().any(|row| row.version == requested) => {
                return Err(Error::OperationNotPermitted(format!(
                    "Overwrite new schema with version {requested} of subject {subject} is not permitted."
                )));
            }
            Some(requested) => requested,
            // An import may have taken the highest version there is.
            None => match rows.last() {
                None => 1,
                Some(row) => row.version.checked_add(1).ok_or_else(|| {
                    Error::OperationNotPermitted(format!(
                        "Subject {subject} has its highest version, {}: no version follows it",
                        i32::MAX
                    ))
                })?,
            },
        };

        lock_schemas(&mut tx).await?;
        let id = match options.id {
            Some(requested) => store_schema_as(&mut tx, schema, requested).await?,
            None => store_schema(&mut tx, schema).await?,
        };
        sqlx::query(
            "INSERT INTO schema_registry_subject_versions (subject, version, schema_id)
             VALUES ($1, $2, $3)",
        )
        .bind(subject)
        .bind(version)
        .bind(id)
        .execute(&mut *tx)
        .await?;

        tx.commit().await?;
        Ok((id, version))
    }

    /// Rows stored before the identity form existed carry a fingerprint of the parsing
    /// canonical form, rows stored before a change of the forms the old forms' fingerprints;
    /// a migration marks them with no normalized fingerprint. Postgres cannot compute the new
    /// ones, so the first registration or lookup of each process does (an empty no-op
    /// afterwards).
    ///
    /// Different canonical forms always have different identity forms, and each change of
    /// the forms kept apart what they kept apart before, so the rewritten fingerprints stay
    /// unique.
    async fn upgrade_fingerprints(&self) -> Result<()> {
        if self.fingerprints_upgraded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        lock_schemas(&mut tx).await?;
        let legacy: Vec<(i32, String)> = sqlx::query_as(
            "SELECT id, schema FROM schema_registry_schemas WHERE normalized_fingerprint IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        if !legacy.is_empty() {
            // Park the old values where no sha256 can be (33 bytes), so rewriting one row can't
            // collide with another's not yet rewritten value.
            sqlx::query(
                "UPDATE schema_registry_schemas SET fingerprint = fingerprint || '\\x00'::bytea
                 WHERE normalized_fingerprint IS NULL",
            )
            .execute(&mut *tx)
            .await?;
        }
        for (id, text) in legacy {
            let rewrite = match ParsedSchema::parse(&text) {
                Ok(parsed) => sqlx::query(
                    "UPDATE schema_registry_schemas
                     SET fingerprint = $2, normalized_fingerprint = $3
                     WHERE id = $1",
                )
                .bind(id)
                .bind(parsed.fingerprint)
                .bind(parsed.normalized_fingerprint),
                // It parsed when it was stored, so only a change of Avro library gets here.
                // The schema stays readable by id; it just won't be matched on registration.
                Err(e) => {
                    tracing::warn!(id, error = %e, "stored schema no longer parses; fingerprint left as it was");
                    sqlx::query(
                        "UPDATE schema_registry_schemas
                         SET fingerprint = substring(fingerprint FROM 1 FOR 32),
                             normalized_fingerprint = substring(fingerprint FROM 1 FOR 32)
                         WHERE id = $1",
                    )
                    .bind(id)
                }
            };
            rewrite.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.fingerprints_upgraded.store(true, Ordering::Release);
        Ok(())
    }

    /// The schema text for a global id. Deleting subjects never removes it, since messages
    /// already written with that id must stay decodable.
    pub async fn schema_by_id(&self, id: i32) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT schema FROM schema_registry_schemas WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Subject names in order, `limit` of them from `offset`.
    pub async fn subjects(
        &self,
        include_deleted: bool,
        prefix: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT subject FROM schema_registry_subject_versions
             WHERE (NOT deleted OR $1) AND starts_with(subject, $2)
             ORDER BY subject OFFSET $3 LIMIT $4",
        )
        .bind(include_deleted)
        .bind(prefix)
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<i32>> {
        let versions: Vec<i32> = sqlx::query_scalar(
            "SELECT version FROM schema_registry_subject_versions
             WHERE subject = $1 AND (NOT deleted OR $2)
             ORDER BY version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        if versions.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions)
    }

    pub async fn subject_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        include_deleted: bool,
    ) -> Result<SubjectVersion> {
        let rows: Vec<SubjectVersion> = sqlx::query_as(
            "SELECT v.subject, v.version, s.id, s.schema
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND (NOT v.deleted OR $2)
             ORDER BY v.version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let picked = match selector {
            VersionSelector::Latest => rows.into_iter().last(),
            VersionSelector::Number(n) => rows.into_iter().find(|row| row.version == n),
        };
        picked.ok_or_else(|| match selector {
            VersionSelector::Number(n) => Error::VersionNotFound(n),
            VersionSelector::Latest => Error::SubjectNotFound(subject.to_owned()),
        })
    }

    /// `POST /subjects/{subject}`: which version of the subject holds this schema. With
    /// `normalize`, any version whose normalized form is the schema's matches.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
        normalize: bool,
    ) -> Result<SubjectVersion> {
        self.upgrade_fingerprints().await?;
        let found: Option<SubjectVersion> = sqlx::query_as(
            "SELECT v.subject, v.version, s.id, s.schema
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND (NOT v.deleted OR $3)
               AND CASE WHEN $4 THEN s.normalized_fingerprint = $5 ELSE s.fingerprint = $2 END
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .bind(include_deleted)
        .bind(normalize)
        .bind(&schema.normalized_fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(found) = found {
            return Ok(found);
        }
        // Tell "no such subject" apart from "subject exists, schema isn't in it".
        self.versions(subject, include_deleted).await?;
        Err(Error::SchemaNotFound)
    }

    /// (subject, version) pairs using a global id; 40403 if the id was never assigned.
    pub async fn id_versions(&self, id: i32, include_deleted: bool) -> Result<Vec<(String, i32)>> {
        if self.schema_by_id(id).await?.is_none() {
            return Err(Error::SchemaIdNotFound(id));
        }
        Ok(sqlx::query_as(
            "SELECT subject, version FROM schema_registry_subject_versions
             WHERE schema_id = $1 AND (NOT deleted OR $2)
             ORDER BY subject, version",
        )
        .bind(id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Soft delete (returns the versions it hid) or, after a soft delete, permanent delete
    /// (returns the versions it removed). Schemas themselves are kept, see `schema_by_id`.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        refuse_if_read_only(&mut tx, subject).await?;
        let rows = version_rows(&mut tx, subject).await?;
        if rows.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let live: Vec<i32> = rows
            .iter()
            .filter(|row| !row.deleted)
            .map(|row| row.version)
            .collect();
        let deleted = if permanent {
            if !live.is_empty() {
                return Err(Error::SubjectNotSoftDeleted(subject.to_owned()));
            }
            sqlx::query("DELETE FROM schema_registry_subject_versions WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
            rows.iter().map(|row| row.version).collect()
        } else {
            if live.is_empty() {
                return Err(Error::SubjectSoftDeleted(subject.to_owned()));
            }
            sqlx::query(
                "UPDATE schema_registry_subject_versions SET deleted = true
                 WHERE subject = $1 AND NOT deleted",
            )
            .bind(subject)
            .execute(&mut *tx)
            .await?;
            forget_subject_settings(&mut tx, subject).await?;
            live
        };
        tx.commit().await?;
        Ok(deleted)
    }

    /// Version-level counterpart of [`Registry::delete_subject`]; returns the version number.
    pub async fn delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        permanent: bool,
    ) -> Result<i32> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        refuse_if_read_only(&mut tx, subject).await?;
        let all = version_rows(&mut tx, subject).await?;
        let live: Vec<VersionRow> = all.iter().filter(|row| !row.deleted).copied().collect();
        // A soft delete only sees a subject with live versions, and "latest" is the newest live
        // one; a permanent delete must reach versions that are already soft-deleted.
        let visible = if permanent { &all } else { &live };
        let row = match selector {
            VersionSelector::Latest => visible.last().copied(),
            VersionSelector::Number(n) if !visible.is_empty() => Some(
                all.iter()
                    .find(|row| row.version == n)
                    .copied()
                    .ok_or(Error::VersionNotFound(n))?,
            ),
            VersionSelector::Number(_) => None,
        };
        let Some(row) = row else {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        };
        let version = row.version;
        if permanent {
            if !row.deleted {
                return Err(Error::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version,
                });
            }
            sqlx::query(
                "DELETE FROM schema_registry_subject_versions WHERE subject = $1 AND version = $2",
            )
            .bind(subject)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        } else {
            if row.deleted {
                return Err(Error::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version,
                });
            }
            sqlx::query(
                "UPDATE schema_registry_subject_versions SET deleted = true
                 WHERE subject = $1 AND version = $2",
            )
            .bind(subject)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            if live.len() == 1 {
                forget_subject_settings(&mut tx, subject).await?;
            }
        }
        tx.commit().await?;
        Ok(version)
    }
}

/// The id of `schema`, inserting it under the next id of the sequence if it is new. Runs under
/// [`lock_schemas`].
async fn store_schema(
    tx: &mut Transaction<'static, Postgres>,
    schema: &ParsedSchema,
) -> Result<i32> {
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT id FROM schema_registry_schemas WHERE fingerprint = $1")
            .bind(&schema.fingerprint)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(id) = stored {
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO schema_registry_schemas
             (fingerprint, normalized_fingerprint, canonical, schema)
         VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(&schema.fingerprint)
    .bind(&schema.normalized_fingerprint)
    .bind(&schema.canonical)
    .bind(&schema.text)
    .fetch_one(&mut **tx)
    .await?)
}

/// Stores `schema` under exactly `id` (an import). Refuses an id that holds another schema, and
/// a schema already stored under another id: a schema has one id here. Moves the sequence past
/// `id`, so later registrations don't draw it. Runs under [`lock_schemas`].
async fn store_schema_as(
    tx: &mut Transaction<'static, Postgres>,
    schema: &ParsedSchema,
    id: i32,
) -> Result<i32> {
    let holder: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT fingerprint FROM schema_registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    match holder {
        Some(fingerprint) if fingerprint == schema.fingerprint => return Ok(id),
        Some(_) => {
            return Err(Error::OperationNotPermitted(format!(
                "Overwrite new schema with id {id} is not permitted."
            )));
        }
        None => {}
    }
    let existing: Option<i32> =
        sqlx::query_scalar("SELECT id FROM schema_registry_schemas WHERE fingerprint = $1")
            .bind(&schema.fingerprint)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(existing) = existing {
        return Err(Error::IdDoesNotMatch {
            existing,
            requested: id,
        });
    }
    sqlx::query(
        "INSERT INTO schema_registry_schemas
             (id, fingerprint, normalized_fingerprint, canonical, schema)
         OVERRIDING SYSTEM VALUE
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&schema.fingerprint)
    .bind(&schema.normalized_fingerprint)
    .bind(&schema.canonical)
    .bind(&schema.text)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "SELECT setval(seq, $1)
         FROM (SELECT pg_get_serial_sequence('schema_registry_schemas', 'id')::regclass AS seq) s
         WHERE $1 > COALESCE(pg_sequence_last_value(seq), 0)",
    )
    .bind(i64::from(id))
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// [`incompatibilities`] off the async workers, one judgement at a time in the process. The
/// work of one is bounded ([`crate::compatibility::MAX_COMPARISONS`]), but anyone may ask
/// for it (`POST /compatibility/...` takes no credentials): on the runtime's workers two at
/// once held every request of the process until they were done.
pub(crate) async fn judged(
    level: CompatibilityLevel,
    candidate: &ParsedSchema,
    previous: Vec<String>,
) -> Result<Vec<String>> {
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = ONE_AT_A_TIME
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let candidate = candidate.clone();
    tokio::task::spawn_blocking(move || incompatibilities(level, &candidate, &previous))
        .await
        .unwrap_or_else(|e| {
            Err(Error::UnprocessableEntity(format!(
                "the compatibility check failed on this schema: {e}"
            )))
        })
}
