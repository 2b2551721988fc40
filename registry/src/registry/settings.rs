//! Compatibility levels and modes (READWRITE, READONLY, IMPORT), global and per subject:
//! stored, effective (the subject's, else the global one), set and deleted; and the
//! compatibility checks of a candidate schema against a version or a whole subject.

use std::fmt;

use sqlx::{PgExecutor, Postgres, Transaction};

use crate::avro::ParsedSchema;
use crate::compatibility::CompatibilityLevel;
use crate::error::{Error, Result};

use super::{GLOBAL, Registry, SubjectVersion, advisory_lock, live_schemas, lock_subject};

/// What a subject (or the whole registry) accepts, as Confluent's `/mode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    /// Registrations of new schemas and deletions are refused.
    ReadOnly,
    /// Registrations must carry the id (and may carry the version) they are stored under, as a
    /// migration from another registry does; compatibility is not checked.
    Import,
}

impl Mode {
    pub const DEFAULT: Self = Self::ReadWrite;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "READWRITE",
            Self::ReadOnly => "READONLY",
            Self::Import => "IMPORT",
        }
    }

    /// Case-insensitive, as Confluent.
    pub fn parse(mode: &str) -> Result<Self> {
        [Self::ReadWrite, Self::ReadOnly, Self::Import]
            .into_iter()
            .find(|candidate| candidate.as_str().eq_ignore_ascii_case(mode))
            .ok_or_else(|| Error::InvalidMode(mode.to_owned()))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) async fn stored_level(
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

/// The subject's level, else the global one, else the default.
pub(super) async fn effective_level(
    tx: &mut Transaction<'static, Postgres>,
    subject: &str,
) -> Result<CompatibilityLevel> {
    Ok(match stored_level(&mut **tx, subject).await? {
        Some(level) => level,
        None => stored_level(&mut **tx, GLOBAL)
            .await?
            .unwrap_or(CompatibilityLevel::DEFAULT),
    })
}

pub(super) async fn stored_mode(
    executor: impl PgExecutor<'_>,
    subject: &str,
) -> Result<Option<Mode>> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT mode FROM schema_registry_mode WHERE subject = $1")
            .bind(subject)
            .fetch_optional(executor)
            .await?;
    stored.as_deref().map(Mode::parse).transpose()
}

/// The subject's mode, else the global one, else READWRITE.
pub(super) async fn effective_mode(
    tx: &mut Transaction<'static, Postgres>,
    subject: &str,
) -> Result<Mode> {
    if subject != GLOBAL
        && let Some(mode) = stored_mode(&mut **tx, subject).await?
    {
        return Ok(mode);
    }
    Ok(stored_mode(&mut **tx, GLOBAL)
        .await?
        .unwrap_or(Mode::DEFAULT))
}

pub(super) async fn refuse_if_read_only(
    tx: &mut Transaction<'static, Postgres>,
    subject: &str,
) -> Result<()> {
    if effective_mode(tx, subject).await? == Mode::ReadOnly {
        return Err(Error::OperationNotPermitted(format!(
            "Subject {subject} is in read-only mode"
        )));
    }
    Ok(())
}

/// Confluent drops a subject's own level and mode once it has no live version, so a
/// re-created subject starts from the global ones again.
pub(super) async fn forget_subject_settings(
    tx: &mut Transaction<'static, Postgres>,
    subject: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM schema_registry_config WHERE subject = $1")
        .bind(subject)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM schema_registry_mode WHERE subject = $1")
        .bind(subject)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Checking against one chosen version: transitivity means nothing there, only the direction.
pub(super) fn against_one_version(level: CompatibilityLevel) -> CompatibilityLevel {
    match level {
        CompatibilityLevel::BackwardTransitive => CompatibilityLevel::Backward,
        CompatibilityLevel::ForwardTransitive => CompatibilityLevel::Forward,
        CompatibilityLevel::FullTransitive => CompatibilityLevel::Full,
        other => other,
    }
}

impl Registry {
    /// Why `schema` may not follow `chosen` (a version from [`Registry::subject_version`]), at
    /// its subject's level taken against that version alone
    /// (`POST /compatibility/subjects/{s}/versions/{v}`).
    pub async fn incompatibilities_with_version(
        &self,
        chosen: &SubjectVersion,
        schema: &ParsedSchema,
    ) -> Result<Vec<String>> {
        let level = self.compatibility(&chosen.subject).await?;
        super::judged(
            against_one_version(level),
            schema,
            vec![chosen.schema.clone()],
        )
        .await
    }

    /// Why `schema` may not join the subject, exactly as registration would judge it
    /// (`POST /compatibility/subjects/{s}/versions`). A subject without live versions accepts
    /// anything.
    pub async fn incompatibilities_with_subject(
        &self,
        subject: &str,
        schema: &ParsedSchema,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let level = effective_level(&mut tx, subject).await?;
        let previous = live_schemas(&mut *tx, subject).await?;
        tx.commit().await?;
        super::judged(level, schema, previous).await
    }

    pub async fn global_compatibility(&self) -> Result<CompatibilityLevel> {
        Ok(stored_level(&self.pool, GLOBAL)
            .await?
            .unwrap_or(CompatibilityLevel::DEFAULT))
    }

    /// The level registration applies to `subject`: its own, else the global one.
    pub async fn compatibility(&self, subject: &str) -> Result<CompatibilityLevel> {
        let mut tx = self.pool.begin().await?;
        let level = effective_level(&mut tx, subject).await?;
        tx.commit().await?;
        Ok(level)
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

    /// The mode configured on `subject` itself, or the global one for `None` (no defaults).
    pub async fn stored_mode(&self, subject: Option<&str>) -> Result<Option<Mode>> {
        stored_mode(&self.pool, subject.unwrap_or(GLOBAL)).await
    }

    /// The mode in force for `subject` (its own, else the global one, else READWRITE), or the
    /// global mode for `None`.
    pub async fn mode(&self, subject: Option<&str>) -> Result<Mode> {
        let mut tx = self.pool.begin().await?;
        let mode = effective_mode(&mut tx, subject.unwrap_or(GLOBAL)).await?;
        tx.commit().await?;
        Ok(mode)
    }

    /// Sets the mode of `subject`, or the global mode for `None`.
    ///
    /// Entering IMPORT needs the subject (the registry, for `None`) to have no live version,
    /// unless `force`; its soft-deleted versions are then removed for good, so that imported
    /// versions can take their numbers (Confluent clears them the same way).
    pub async fn set_mode(&self, subject: Option<&str>, mode: Mode, force: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let key = subject.unwrap_or(GLOBAL);
        match subject {
            Some(subject) => lock_subject(&mut tx, subject).await?,
            None => advisory_lock(&mut tx, GLOBAL).await?,
        }
        if mode == Mode::Import && !force && effective_mode(&mut tx, key).await? != Mode::Import {
            let occupied: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM schema_registry_subject_versions
                                WHERE NOT deleted AND ($1 IS NULL OR subject = $1))",
            )
            .bind(subject)
            .fetch_one(&mut *tx)
            .await?;
            if occupied {
                return Err(Error::OperationNotPermitted(
                    "Cannot import since found existing subjects".to_owned(),
                ));
            }
            sqlx::query(
                "DELETE FROM schema_registry_subject_versions WHERE $1 IS NULL OR subject = $1",
            )
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO schema_registry_mode (subject, mode) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET mode = EXCLUDED.mode",
        )
        .bind(key)
        .bind(mode.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the mode of `subject` and returns it.
    pub async fn delete_mode(&self, subject: &str) -> Result<Option<Mode>> {
        let removed: Option<String> = sqlx::query_scalar(
            "DELETE FROM schema_registry_mode WHERE subject = $1 RETURNING mode",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        removed.as_deref().map(Mode::parse).transpose()
    }
}
