use apache_avro::Schema;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A schema that parsed as Avro, with what registration deduplicates on.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// Exactly as supplied; this is what clients get back.
    pub text: String,
    /// Avro parsing canonical form: two schemas that differ only in whitespace, field
    /// attribute order, docs or defaults are the same schema here.
    pub canonical: String,
    /// sha256 of `canonical`, the unique key of a stored schema.
    pub fingerprint: Vec<u8>,
}

impl ParsedSchema {
    pub fn parse(text: &str) -> Result<Self> {
        let schema = Schema::parse_str(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        let canonical = schema.canonical_form();
        let fingerprint = Sha256::digest(canonical.as_bytes()).to_vec();
        Ok(Self {
            text: text.to_owned(),
            canonical,
            fingerprint,
        })
    }
}
