use std::fmt;

use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use crate::avro::ParsedSchema;
use crate::compatibility::{CompatibilityLevel, incompatibilities};
use crate::error::{Error, Result};

/// Key of the global row in `schema_registry_config`.
const GLOBAL: &str = "";

/// Handle on the Postgres-backed registry; cheap to clone (it is a pool).
#[derive(Debug, Clone)]
pub struct Registry {
    pool: PgPool,
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

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct VersionRow {
    version: i32,
    deleted: bool,
}

/// Serializes every write to one subject for the rest of the transaction, so two concurrent
/// registrations of a new schema cannot both decide it is missing and each add a version.
async fn lock_subject(tx: &mut Transaction<'static, Postgres>, subject: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('schema_registry:' || $1, 0))")
        .bind(subject)
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

async fn stored_level(
    executor: impl PgExecutor<'_>,
    subject: &str,
) -> Result<Option<CompatibilityLevel>> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT compatibility FROM schema_registry_config WHERE subject = $1")
            .bind(subject)
            .fetch_optional(executor)
            .await?;
    stored.as_deref().map(CompatibilityLevel::parse).transpose()
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Register (or find) an AVRO schema under a subject; returns (global id, version).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<(i32, i32)> {
        let parsed = ParsedSchema::parse(schema)?;
        self.register_parsed(subject, &parsed).await
    }

    pub(crate) async fn register_parsed(
        &self,
        subject: &str,
        schema: &ParsedSchema,
    ) -> Result<(i32, i32)> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;

        let existing: Option<(i32, i32)> = sqlx::query_as(
            "SELECT s.id, v.version
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND s.fingerprint = $2 AND NOT v.deleted
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(found) = existing {
            return Ok(found);
        }

        let level = match stored_level(&mut *tx, subject).await? {
            Some(level) => level,
            None => stored_level(&mut *tx, GLOBAL)
                .await?
                .unwrap_or(CompatibilityLevel::DEFAULT),
        };
        let previous: Vec<String> = sqlx::query_scalar(
            "SELECT s.schema
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND NOT v.deleted
             ORDER BY v.version",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let reasons = incompatibilities(level, schema, &previous)?;
        if !reasons.is_empty() {
            return Err(Error::IncompatibleSchema {
                subject: subject.to_owned(),
                reasons,
            });
        }

        // The schema table is shared by all subjects, whose locks don't exclude each other.
        // Taking this lock (always after the subject's, so they cannot deadlock) makes the NOT
        // EXISTS reliable, so racing subjects don't each draw a sequence value and ids stay
        // dense; only new versions get here, so serializing them costs nothing. The unique
        // fingerprint stays the backstop.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('schema_registry:schemas', 0))")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO schema_registry_schemas (fingerprint, canonical, schema)
             SELECT $1, $2, $3
             WHERE NOT EXISTS (SELECT 1 FROM schema_registry_schemas WHERE fingerprint = $1)
             ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(&schema.fingerprint)
        .bind(&schema.canonical)
        .bind(&schema.text)
        .execute(&mut *tx)
        .await?;
        let id: i32 =
            sqlx::query_scalar("SELECT id FROM schema_registry_schemas WHERE fingerprint = $1")
                .bind(&schema.fingerprint)
                .fetch_one(&mut *tx)
                .await?;

        // Soft-deleted versions still count, so a version number is never reused while its row
        // exists (Confluent does the same).
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO schema_registry_subject_versions (subject, version, schema_id)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2
             FROM schema_registry_subject_versions WHERE subject = $1
             RETURNING version",
        )
        .bind(subject)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;

        tx.commit().await?;
        Ok((id, version))
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

    pub async fn subjects(&self, include_deleted: bool, prefix: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT subject FROM schema_registry_subject_versions
             WHERE (NOT deleted OR $1) AND starts_with(subject, $2)
             ORDER BY subject",
        )
        .bind(include_deleted)
        .bind(prefix)
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

    /// `POST /subjects/{subject}`: which version of the subject holds this schema.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<SubjectVersion> {
        let found: Option<SubjectVersion> = sqlx::query_as(
            "SELECT v.subject, v.version, s.id, s.schema
             FROM schema_registry_subject_versions v
             JOIN schema_registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND s.fingerprint = $2 AND (NOT v.deleted OR $3)
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .bind(include_deleted)
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
            // Confluent drops the subject's own compatibility level with the subject, so a
            // re-created subject starts from the global level again.
            sqlx::query("DELETE FROM schema_registry_config WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
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
        }
        tx.commit().await?;
        Ok(version)
    }

    pub async fn global_compatibility(&self) -> Result<CompatibilityLevel> {
        Ok(stored_level(&self.pool, GLOBAL)
            .await?
            .unwrap_or(CompatibilityLevel::DEFAULT))
    }

    /// The level configured on the subject itself, if any (no fallback to global).
    pub async fn subject_compatibility(&self, subject: &str) -> Result<Option<CompatibilityLevel>> {
        stored_level(&self.pool, subject).await
    }

    /// Sets the level of `subject`, or the global level for `None`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO schema_registry_config (subject, compatibility) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
        )
        .bind(subject.unwrap_or(GLOBAL))
        .bind(level.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the level of `subject` (or the global one for `None`) and returns it.
    pub async fn delete_compatibility(
        &self,
        subject: Option<&str>,
    ) -> Result<Option<CompatibilityLevel>> {
        let removed: Option<String> = sqlx::query_scalar(
            "DELETE FROM schema_registry_config WHERE subject = $1 RETURNING compatibility",
        )
        .bind(subject.unwrap_or(GLOBAL))
        .fetch_optional(&self.pool)
        .await?;
        removed
            .as_deref()
            .map(CompatibilityLevel::parse)
            .transpose()
    }
}
